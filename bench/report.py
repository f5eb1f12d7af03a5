"""Summaries of the long IoU table: every number is a groupby of it, with n, spread and exclusions.

One summary row per group (a sweep's config columns `by`, method, variant, tau):
- `mIoU`: mean IoU over the scored (sample, word) pairs; `std_seeds`: std (ddof 1) of the per-seed mIoU;
- `ci95_lo`, `ci95_hi`: 95% bootstrap CI of the mIoU resampling prompts (each prompt with all its pairs;
  `scipy.stats.bootstrap`, BCa); the resamples are drawn from a generator seeded by the row's own prompt ids (and
  `seed`), so a row's CI is the same in a job's summary, in a merged sweep and in a rerun, whatever other rows
  share its table;
- `diff_vs_<baseline>`: mean paired difference to the baseline (same sample, word, config and tau), its
  prompt-bootstrap CI (`diff_ci95_lo`, `diff_ci95_hi`), and p-values of the Wilcoxon signed-rank test
  (`p_wilcoxon`) and the paired t-test (`p_ttest`) on the per-prompt means of the method vs the baseline;
- `n_pairs` (distinct (sample, word) pairs), `n_prompts`, `n_seeds`, `n_excluded` and the exclusions by reason;
- with a `draw` column (random relevance scored once per draw): `std_draws` (std of the per-draw mIoU) and
  `n_draws`; the mIoU and its CI pool the draws;
- with a `fold` column (held-out oracle): `n_folds`, the folds the pairs were scored in.

A method with more than CURVE_MIN_VARIANTS variants at one (config, tau) is a k-curve: its rows are in the
CSV (and the figures), the Markdown / LaTeX tables show its best k, and its CIs use fewer resamples.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

#: the long IoU table's columns (one row per sample, word, method, variant and tau; `evaluate` writes it)
COLUMNS = ["sample_id", "prompt_id", "seed", "tau", "word", "method", "variant", "n_heads", "iou", "excluded"]
CURVE_MIN_VARIANTS = 10


KEYS = ["method", "variant", "tau"]


def summarise(table: pd.DataFrame, baseline: str = "daam", by: list[str] = (), n_resamples: int = 2000,
              curve_resamples: int = 400, seed: int = 0) -> pd.DataFrame:
    """Per (by..., method, variant, tau): mIoU, spread over seeds, prompt-bootstrap CI, n, exclusions and
    the paired difference to `baseline` with its CI and tests (see the module docstring)."""
    keys = list(by) + KEYS
    ok = table[table["excluded"].isna()]
    out = table.groupby(keys, sort=False)["n_heads"].median().astype(int).to_frame()
    scored = ok.groupby(keys, sort=False)
    out["mIoU"] = scored["iou"].mean()
    out["std_seeds"] = ok.groupby(keys + ["seed"], sort=False)["iou"].mean().groupby(level=keys, sort=False).std()
    resamples = pd.Series(n_resamples, index=out.index)
    resamples[out.index.get_level_values("method").isin(curve_methods(table, by))] = curve_resamples
    per_prompt = ok.groupby(keys + ["prompt_id"], sort=False)["iou"].agg(["sum", "count"])
    ci = _ratio_ci(per_prompt, resamples, seed).reindex(columns=["lo", "hi"])  # no columns when nothing is scored
    out = out.join(ci.set_axis(["ci95_lo", "ci95_hi"], axis=1))
    out["n_pairs"] = scored.size()
    if "draw" in table.columns:
        out["n_pairs"] = ok.drop_duplicates(keys + ["sample_id", "word"]).groupby(keys, sort=False).size()
        per_draw = ok.groupby(keys + ["draw"], sort=False)["iou"].mean().groupby(level=keys, sort=False)
        out["std_draws"] = per_draw.std()
        out["n_draws"] = per_draw.size()
    if "fold" in table.columns:  # held-out oracle: each fold scored with relevance chosen on the others
        out["n_folds"] = scored["fold"].nunique()
    out["n_prompts"] = scored["prompt_id"].nunique()
    out["n_seeds"] = scored["seed"].nunique()
    excluded = table[table["excluded"].notna()]
    if "draw" in table.columns:  # an excluded pair has a row per random draw: counted once, as in n_pairs
        excluded = excluded.drop_duplicates(keys + ["sample_id", "word"])
    reasons = excluded.groupby(keys + ["excluded"], sort=False).size()
    out["n_excluded"] = reasons.groupby(level=keys, sort=False).sum()
    out["excluded_reasons"] = reasons.groupby(level=keys, sort=False).apply(
        lambda r: "; ".join(f"{reason}: {n}" for reason, n in zip(r.index.get_level_values("excluded"), r)))
    out[["n_pairs", "n_prompts", "n_seeds", "n_excluded"]] = out[
        ["n_pairs", "n_prompts", "n_seeds", "n_excluded"]].fillna(0).astype(int)
    out["excluded_reasons"] = out["excluded_reasons"].fillna("")
    if (ok["method"] == baseline).any():
        out = out.join(_paired_vs(ok, baseline, keys, resamples, seed))
    return out.reset_index()


def _paired_vs(ok: pd.DataFrame, baseline: str, keys: list[str], resamples: pd.Series, seed: int) -> pd.DataFrame:
    """Paired difference of every non-baseline group to the baseline's rows of the same config and tau."""
    pair_keys = keys[:-3] + ["tau", "sample_id", "word"]
    base = ok[ok["method"] == baseline][pair_keys + ["iou"]].drop_duplicates(pair_keys)
    pairs = ok[ok["method"] != baseline].merge(base, on=pair_keys, suffixes=("", "_base"))
    pairs["diff"] = pairs["iou"] - pairs["iou_base"]
    out = pairs.groupby(keys, sort=False)["diff"].mean().rename(f"diff_vs_{baseline}").to_frame()
    per_prompt = pairs.groupby(keys + ["prompt_id"], sort=False)
    ci = _ratio_ci(per_prompt["diff"].agg(["sum", "count"]), resamples, seed)
    out = out.join(ci.set_axis(["diff_ci95_lo", "diff_ci95_hi"], axis=1))
    method = per_prompt["iou"].mean().unstack("prompt_id")  # (G, P) per-prompt means on the matched pairs
    base_means = per_prompt["iou_base"].mean().unstack("prompt_id").loc[method.index, method.columns]
    return out.join(_rowwise(_paired_tests, method, base_means))


def _paired_tests(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Wilcoxon signed-rank and paired t-test p-values, row-wise; NaN with under 2 prompts."""
    if a.shape[1] < 2:
        return {"p_wilcoxon": np.full(len(a), np.nan), "p_ttest": np.full(len(a), np.nan)}
    import scipy.stats  # here, not at the top: 1.4 s of import that only the statistics need

    return {"p_wilcoxon": scipy.stats.wilcoxon(a, b, axis=-1).pvalue,
            "p_ttest": scipy.stats.ttest_rel(a, b, axis=-1).pvalue}


def _ratio_ci(per_prompt: pd.DataFrame, resamples: pd.Series, seed: int) -> pd.DataFrame:
    """95% BCa bootstrap CI of sum(sum) / sum(count) over prompts, per group (prompts resampled with their pairs).
    Groups with the same prompts share one vectorised call; its generator is seeded by those prompt ids, the
    number of resamples and `seed` alone, so a group's CI does not depend on the other groups."""
    sums = per_prompt["sum"].unstack("prompt_id")  # (G, P), NaN where a group lacks a prompt
    counts = per_prompt["count"].unstack("prompt_id")
    n_boot = resamples.reindex(sums.index).to_numpy()
    import scipy.stats  # here, not at the top: 1.4 s of import that only the statistics need

    def ci(s: np.ndarray, c: np.ndarray, rows: np.ndarray, prompts: list) -> dict[str, np.ndarray]:
        if s.shape[1] < 2:
            return {"lo": np.full(len(s), np.nan), "hi": np.full(len(s), np.nan)}
        res = scipy.stats.bootstrap((s, c), lambda x, n, axis: x.sum(axis) / n.sum(axis), paired=True,
                                    vectorized=True, axis=-1, n_resamples=int(n_boot[rows[0]]), method="BCa",
                                    batch=max(1, int(2e7 // s.size)),
                                    rng=_prompt_rng(prompts, int(n_boot[rows[0]]), seed))
        lo, hi = res.confidence_interval.low, res.confidence_interval.high
        ratio = s / c
        constant = np.all(ratio == ratio[:, :1], axis=1)  # BCa is undefined for identical values: CI = the value
        return {"lo": np.where(constant, ratio[:, 0], lo), "hi": np.where(constant, ratio[:, 0], hi)}

    return _rowwise(ci, sums, counts, split=n_boot)


def _prompt_rng(prompts: list, n_resamples: int, seed: int) -> np.random.Generator:
    """Generator of one bootstrap call, a function of its prompt ids (in column order), resample count and seed."""
    key = "\x1f".join(map(str, prompts)) + f"\x1e{n_resamples}\x1e{seed}"
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


def _rowwise(fn, *frames: pd.DataFrame, split: np.ndarray | None = None) -> pd.DataFrame:
    """fn(*arrays (g, p)[, rows, prompts]) -> {column: (g,)}, called once per set of rows with the same prompts
    present (and the same `split` value), so every call is one vectorised scipy call without NaN; with `split`,
    fn also gets the rows and the present column labels (prompt ids)."""
    present = frames[0].notna().to_numpy()
    sets: dict[tuple, list[int]] = {}
    for i, row in enumerate(present):
        sets.setdefault((row.tobytes(), None if split is None else split[i]), []).append(i)
    result: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate groups (all ties, one prompt) give NaN, which the table shows
        for (_, _), rows in sets.items():
            rows = np.array(rows)
            cols = present[rows[0]]
            arrays = [f.to_numpy(dtype=float)[rows][:, cols] for f in frames]
            part = fn(*arrays, rows, list(frames[0].columns[cols])) if split is not None else fn(*arrays)
            for name, values in part.items():
                result.setdefault(name, np.full(len(present), np.nan))[rows] = values
    return pd.DataFrame(result, index=frames[0].index)


def curve_methods(frame: pd.DataFrame, by: list[str] = ()) -> set[str]:
    """Methods with more than CURVE_MIN_VARIANTS variants at one (config, tau): shown as k-curves."""
    keys = list(by) + ["method", "tau"]
    n = frame.groupby(keys, sort=False)["variant"].nunique()
    return set(n[n > CURVE_MIN_VARIANTS].index.get_level_values("method"))


def reference_tau(taus: Iterable[float]) -> float:
    """The tau shown in single-tau views, of the taus scored (a list or a summary's `tau` column): DAAM's 0.4
    when scored, else the median tau."""
    taus = np.unique(np.asarray(taus, dtype=float))
    return 0.4 if np.isclose(taus, 0.4).any() else float(taus[len(taus) // 2])


def single_tau_rows(summary: pd.DataFrame, by: list[str] = ()) -> pd.DataFrame:
    """The rows of single-tau views: those at the reference tau, and every row of a (config, method, variant)
    that has none there (a held-out oracle is scored at each fold's calibrated tau only)."""
    keys = list(by) + ["method", "variant"]
    at_ref = np.isclose(summary["tau"], reference_tau(summary["tau"]))
    shown = summary[keys][at_ref].drop_duplicates()
    has_ref = summary[keys].merge(shown, how="left", indicator=True)["_merge"].eq("both").to_numpy()
    return summary[at_ref | ~has_ref]


def config_label(row: pd.Series, by: list[str]) -> str:
    """`key=value` of a sweep's config columns (the last dotted part of each key), '' without them."""
    return " ".join(f"{k.split('.')[-1]}={row[k]}" for k in by)


def display_tables(summary: pd.DataFrame, by: list[str] = (), baseline: str = "daam") -> tuple[pd.DataFrame,
                                                                                                 pd.DataFrame]:
    """Formatted tables for Markdown / LaTeX: (point methods, k-curves as best k and all heads)."""
    by = list(by)
    curves = curve_methods(summary, by)
    diff = f"diff_vs_{baseline}"

    def fmt(rows: pd.DataFrame) -> pd.DataFrame:
        labels = ["relevance"] if "relevance" in rows and "relevance" not in by else []
        out = rows[by + KEYS[:2] + labels + KEYS[2:] + ["n_heads"]].copy()
        out["mIoU"] = rows["mIoU"].map("{:.4f}".format)
        out["95% CI"] = [_interval(lo, hi, m) for lo, hi, m in zip(rows["ci95_lo"], rows["ci95_hi"], rows["mIoU"])]
        out["std seeds"] = rows["std_seeds"].map(_num)
        if "std_draws" in rows:
            out["std draws"] = rows["std_draws"].map(_num)
        if diff in rows:
            out[f"Δ {baseline}"] = rows[diff].map(lambda v: _num(v, "{:+.4f}"))
            out["Δ 95% CI"] = [_interval(lo, hi, d) for lo, hi, d in
                               zip(rows["diff_ci95_lo"], rows["diff_ci95_hi"], rows[diff])]
            out["p Wilcoxon"] = rows["p_wilcoxon"].map(lambda v: _num(v, "{:.3g}"))
            out["p t-test"] = rows["p_ttest"].map(lambda v: _num(v, "{:.3g}"))
        out["n pairs / prompts / seeds"] = [f"{a} / {b} / {c}" for a, b, c in
                                            zip(rows["n_pairs"], rows["n_prompts"], rows["n_seeds"])]
        out["excluded"] = [f"{n} ({r})" if n else "0" for n, r in zip(rows["n_excluded"], rows["excluded_reasons"])]
        return out.rename(columns={"n_heads": "heads"})

    points = fmt(summary[~summary["method"].isin(curves)])
    curve_rows = summary[summary["method"].isin(curves)]
    picks = []
    for _, grp in curve_rows.groupby(by + ["method", "tau"], sort=False):
        best = grp.loc[grp["mIoU"].idxmax()].copy()
        best["variant"] = f"best {best['variant']} (in-sample)"
        picks += [best, grp.loc[grp["n_heads"].idxmax()]]
    return points, fmt(pd.DataFrame(picks)) if picks else pd.DataFrame()


def _num(v: float, pattern: str = "{:.4f}") -> str:
    return "" if pd.isna(v) else pattern.format(v)


def degenerate(estimate: float, lo: float, hi: float) -> str:
    """Why [lo, hi] is no usable CI of `estimate` ("zero width", "excludes its estimate"), or "" when it is one."""
    if pd.isna(lo) or pd.isna(hi) or pd.isna(estimate):
        return ""
    if hi <= lo:
        return "zero width"
    return "" if lo <= estimate <= hi else "excludes its estimate"


def _interval(lo: float, hi: float, estimate: float) -> str:
    """[lo, hi] as printed; a degenerate interval is named as such instead of shown as a CI."""
    if pd.isna(lo) or pd.isna(hi):
        return ""
    flaw = degenerate(estimate, lo, hi)
    return f"(degenerate CI: {flaw})" if flaw else f"[{lo:.4f}, {hi:.4f}]"


def pooled(rows: pd.DataFrame, by: list[str]) -> list[tuple[str, pd.Series]]:
    """(config label, row) per row; a (method, variant, tau) whose mIoU and n are the same in several configs
    (DAAM in every job of a sweep over selective's settings) given once, labelled with the configs it pools
    (`relevance=hrv,random`)."""
    if not by:
        return [("", r) for _, r in rows.iterrows()]
    out = []
    for _, grp in rows.groupby(["method", "variant", "tau", "mIoU", "n_pairs"], sort=False, dropna=False):
        label = " ".join(f"{k.split('.')[-1]}={','.join(map(str, dict.fromkeys(grp[k])))}" for k in by)
        out.append((label, grp.iloc[0]))
    return out


def summary_header(title: str, facts: dict[str, str], notice: str = "") -> list[str]:
    """summary.md's header lines: the title, in bold the notice of a test segmenter (numbers that only check the
    pipeline), then one bullet per fact of the run (model, prompts, ground truth, relevance, cache, ...)."""
    return [f"# {title}", "", *([f"**{notice}**", ""] if notice else []),
            *(f"- {name}: {value}" for name, value in facts.items())]


def write_summary(summary: pd.DataFrame, run_dir: Path, header: list[str], by: list[str] = ()) -> str:
    """Write summary.csv (every group, numeric), summary.md and summary.tex (header first); returns the Markdown."""
    summary.to_csv(run_dir / "summary.csv", index=False)
    points, curves = display_tables(summary, by)
    notes = ["", "mIoU over (sample, word) pairs; 95% CI: BCa bootstrap over prompts; Δ: paired difference to "
             "DAAM (same sample, word, config and tau) with its bootstrap CI; p: Wilcoxon signed-rank and paired "
             "t-test on per-prompt means."]
    md = "\n".join(header + notes) + "\n\n" + points.to_markdown(index=False) + "\n"
    tex = points.to_latex(index=False, escape=True)
    if len(curves):
        md += ("\n## k-curves (every k scored; the best k is chosen on these same pairs, so it is optimistic)\n\n"
               + curves.to_markdown(index=False) + "\n")
        tex += "\n" + curves.to_latex(index=False, escape=True)
    (run_dir / "summary.md").write_text(md)
    (run_dir / "summary.tex").write_text(tex)
    return md


CHANCE_METHODS = ("centred_disc", "end_of_text", "other_word")  # chance maps: no head ranking involved
HEADLINE_K = "k=25%"  # the k a verdict shows for a method scored at several (the seed paper's top 20-25% of heads)


def side(row: pd.Series) -> str:
    """'better' / 'worse' when the 95% CI of Δ vs DAAM lies above / below 0, 'unclear' when it spans 0,
    'not compared' without paired scores."""
    if pd.isna(row.get("diff_vs_daam", np.nan)):
        return "not compared"
    lo, hi = row.get("diff_ci95_lo", np.nan), row.get("diff_ci95_hi", np.nan)
    return "better" if lo > 0 else "worse" if hi < 0 else "unclear"


def verdict(summary: pd.DataFrame, by: list[str] = (), what: str = "run") -> str:
    """The last lines of a run or sweep: DAAM, then per (config, method) its headline k vs DAAM (Δ, CI, p) and
    how every k compares, the chance maps in one line, and a conclusion on selective heads worded by the signs
    and CIs. Columns are padded to the longest label."""
    by = list(by)
    if not summary["method"].eq("daam").any():
        return (f"verdict of this {what}: DAAM was not scored, so no method is compared with it (every row: "
                "summary.md)\nconclusion: none about selected heads vs DAAM")
    summary = summary.reindex(columns=list(dict.fromkeys([*summary.columns, "diff_vs_daam", "diff_ci95_lo",
                                                          "diff_ci95_hi", "p_wilcoxon"])))  # absent: no pairs
    tau = reference_tau(summary["tau"])
    rows = single_tau_rows(summary, by)
    rows = rows[~rows["method"].isin(curve_methods(summary, by))]
    chance = rows[rows["method"].isin(CHANCE_METHODS)]
    table = []
    for label, r in pooled(rows[rows["method"].eq("daam")], by):
        table.append([label, f"DAAM{'' if np.isclose(r['tau'], tau) else f' tau={r.tau:g}'}", f"{r.mIoU:.4f}",
                      _interval(r["ci95_lo"], r["ci95_hi"], r["mIoU"]), "", "", f"n={r.n_pairs}"])
    selective = {}
    ranked = rows[~rows["method"].isin(("daam", *CHANCE_METHODS))]
    for _, grp in ranked.groupby(by + ["method"], sort=False, dropna=False):
        head = grp[grp["variant"].eq(HEADLINE_K)]
        head = head.iloc[0] if len(head) else grp.sort_values("n_heads").iloc[len(grp) // 2]
        label = config_label(head, by) or (f"relevance={head['relevance']}" if head.get("relevance") else "")
        sides = {r["variant"]: side(r) for _, r in grp.iterrows()}  # variant -> better / worse / unclear
        if head["method"] == "selective":
            selective[label or "this run's relevance"] = sides
        at = "" if np.isclose(head["tau"], tau) else f" tau={head['tau']:g}"
        table.append([label, f"{head['method']} {head['variant']}{at}", f"{head['mIoU']:.4f}",
                      "" if pd.isna(head["diff_vs_daam"]) else f"Δ {head['diff_vs_daam']:+.4f} "
                      + _interval(head["diff_ci95_lo"], head["diff_ci95_hi"], head["diff_vs_daam"]),
                      f"p={_num(head['p_wilcoxon'], '{:.2g}')}", side(head), _tally(sides)])
    if table and not any(row[0] for row in table):  # one run without a relevance label: no label column
        table = [row[1:] for row in table]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))] if table else []
    lines = [f"verdict of this {what}: mIoU [95% CI over prompts] at tau {tau:g} (a held-out oracle at its "
             "calibrated tau); Δ: paired difference to DAAM [95% CI], Wilcoxon p"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    if len(chance):
        below = (chance["diff_ci95_hi"] < 0).all()
        lines.append(f"  chance maps ({', '.join(dict.fromkeys(chance['method']))}): "
                     f"{'every one below DAAM' if below else 'not all below DAAM'} "
                     f"(Δ {chance['diff_vs_daam'].min():+.3f} .. {chance['diff_vs_daam'].max():+.3f})")
    lines.append("conclusion: " + _conclusion(selective))
    return "\n".join(lines)


def write_verdict(summary: pd.DataFrame, run_dir: Path, title: str, by: list[str] = (), note: str = "",
                  collect: bool = True) -> str:
    """`verdict` under the run's title (and over `note`, e.g. that a test backend's numbers mean nothing), written
    to `verdict.txt` and (`collect`) appended to the file $BENCH_VERDICTS names, so `make bench` can end with
    every sweep's verdict; returns the text to print."""
    text = (f"{title} (every row: {Path(run_dir) / 'summary.md'})\n"
            + verdict(summary, by, "sweep" if by else "run") + "\n" + (f"{note}\n" if note else ""))
    (Path(run_dir) / "verdict.txt").write_text(text)
    if collect and os.environ.get("BENCH_VERDICTS"):
        with open(os.environ["BENCH_VERDICTS"], "a") as f:
            f.write(text + "\n")
    return text


def _tally(sides: dict[str, str]) -> str:
    """How every k compares: 'worse at all 3 k', or the k of each side."""
    if len(sides) < 2:
        return ""
    kinds = set(sides.values())
    if len(kinds) == 1:
        return f"{next(iter(kinds))} at all {len(sides)} k"
    return "; ".join(f"{kind} at {', '.join(v for v, s in sides.items() if s == kind)}"
                     for kind in ("better", "worse", "unclear", "not compared") if kind in kinds)


def _conclusion(selective: dict[str, dict[str, str]]) -> str:
    """One sentence from the signs and CIs of every selective k, grouped by relevance config."""
    if not selective:
        return "no selective method was scored, so nothing is said about selected heads"
    groups: dict[str, list[str]] = {}
    for label, sides in selective.items():
        kinds = set(sides.values())
        key = {frozenset({"better"}): "beat DAAM at every k", frozenset({"worse"}): "lose to DAAM at every k",
               frozenset({"unclear"}): "do not differ clearly from DAAM at any k",
               frozenset({"not compared"}): "could not be compared with DAAM (no paired scores)",
               }.get(frozenset(kinds), f"compare mixed ({_tally(sides)})")
        groups.setdefault(key, []).append(label)
    parts = [f"{key} with {', '.join(labels)}" for key, labels in groups.items()]
    return "the selected heads " + "; ".join(parts) + " (by the 95% CIs of Δ over prompts)"
