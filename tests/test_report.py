"""Summaries and the console table, checked against independent computations (loops, numpy, scipy)."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from helpers import curve_table, sweep_summary, synthetic_table

from bench.report import curve_methods, degenerate, side, summarise, verdict, write_summary


def percentile_bootstrap(per_prompt_sum: np.ndarray, per_prompt_n: np.ndarray, n: int = 4000) -> tuple:
    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(per_prompt_sum), (n, len(per_prompt_sum)))
    stats = per_prompt_sum[idx].sum(1) / per_prompt_n[idx].sum(1)
    return np.quantile(stats, 0.025), np.quantile(stats, 0.975)


def test_summary_matches_independent_computations():
    table = synthetic_table()
    summary = summarise(table).set_index(["method", "variant", "tau"])
    for tau in (0.4, 0.5):
        for method, variant in (("daam", "all"), ("selective", "k=10")):
            row = summary.loc[(method, variant, tau)]
            ok = table[(table.method == method) & (table.variant == variant) & (table.tau == tau)
                       & table.excluded.isna()]
            assert row["mIoU"] == pytest.approx(ok["iou"].to_numpy().mean(), abs=1e-12)
            per_seed = [ok[ok.seed == s]["iou"].to_numpy().mean() for s in (0, 1)]
            assert row["std_seeds"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)
            assert (row["n_pairs"], row["n_prompts"], row["n_seeds"]) == (len(ok), 29, 2)
            assert row["n_excluded"] == 2 and row["excluded_reasons"] == "no detection: 2"  # prompt 0: 1 word x 2 seeds
            prompts = sorted(ok.prompt_id.unique())
            sums = np.array([ok[ok.prompt_id == p]["iou"].sum() for p in prompts])
            counts = np.array([(ok.prompt_id == p).sum() for p in prompts], float)
            lo, hi = percentile_bootstrap(sums, counts)
            width = hi - lo
            assert row["ci95_lo"] < row["mIoU"] < row["ci95_hi"]
            assert abs(row["ci95_lo"] - lo) < 0.15 * width and abs(row["ci95_hi"] - hi) < 0.15 * width
    # paired difference: same sample, word and tau; tests on per-prompt means of the matched pairs
    sel = summary.loc[("selective", "k=10", 0.5)]
    a = table[(table.method == "selective") & (table.variant == "k=10") & (table.tau == 0.5) & table.excluded.isna()]
    b = table[(table.method == "daam") & (table.tau == 0.5) & table.excluded.isna()]
    m = a.merge(b, on=["sample_id", "word"])
    assert sel["diff_vs_daam"] == pytest.approx((m.iou_x - m.iou_y).mean(), abs=1e-12)
    prompts = sorted(m.prompt_id_x.unique())
    mean_a = np.array([m[m.prompt_id_x == p].iou_x.mean() for p in prompts])
    mean_b = np.array([m[m.prompt_id_x == p].iou_y.mean() for p in prompts])
    assert sel["p_wilcoxon"] == pytest.approx(scipy.stats.wilcoxon(mean_a - mean_b).pvalue, rel=1e-9)
    d = mean_a - mean_b
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    assert sel["p_ttest"] == pytest.approx(2 * scipy.stats.t.sf(abs(t), len(d) - 1), rel=1e-6)
    assert sel["diff_ci95_lo"] > 0  # a +0.03 shift with 0.02 noise over 29 prompts is clearly resolved
    assert np.isnan(summary.loc[("daam", "all", 0.4), "diff_vs_daam"])


def test_summary_pairs_within_sweep_config_and_counts_draws():
    one = synthetic_table(n_prompts=6, taus=(0.4,), gain=0.0)
    two = synthetic_table(n_prompts=6, taus=(0.4,), gain=0.0)
    two.loc[two.method == "daam", "iou"] -= 0.1  # config b: DAAM worse, so selective gains 0.1 there only
    table = pd.concat([one.assign(blocks="a"), two.assign(blocks="b")])
    summary = summarise(table, by=["blocks"]).set_index(["blocks", "method", "variant"])
    diff_a = summary.loc[("a", "selective", "k=20"), "diff_vs_daam"]
    assert summary.loc[("b", "selective", "k=20"), "diff_vs_daam"] == pytest.approx(diff_a + 0.1, abs=1e-12)
    assert summary.loc[("b", "daam", "all"), "mIoU"] == pytest.approx(summary.loc[("a", "daam", "all"), "mIoU"] - 0.1)

    draws = pd.concat([one.assign(draw=d, iou=one.iou + 0.01 * d) for d in range(3)])
    draws.loc[draws.method == "daam", "draw"] = np.nan
    draws = draws.drop_duplicates(["sample_id", "word", "method", "variant", "tau", "draw"])
    row = summarise(draws).set_index(["method", "variant"]).loc[("selective", "k=10")]
    per_draw = [draws[(draws.draw == d) & (draws.variant == "k=10") & draws.excluded.isna()].iou.mean()
                for d in range(3)]
    assert row["std_draws"] == pytest.approx(np.std(per_draw, ddof=1)) and row["n_draws"] == 3
    assert row["n_pairs"] == (one[(one.variant == "k=10") & one.excluded.isna()]).shape[0]


def test_a_rows_ci_is_the_same_in_a_job_a_merge_and_a_rerun():
    """Each row's bootstrap draws from a generator of its own prompts: removing or adding other rows (another
    method, another config of a merged sweep with other prompts) changes no CI, and a rerun repeats it exactly."""
    table = synthetic_table()
    cols = ["ci95_lo", "ci95_hi", "diff_ci95_lo", "diff_ci95_hi"]
    job = summarise(table).set_index(["method", "variant", "tau"])
    fewer = summarise(table[table.variant != "k=20"]).set_index(["method", "variant", "tau"])
    other = synthetic_table(n_prompts=12, seed=5)  # another config: other prompts and values
    merged = summarise(pd.concat([table.assign(blocks="a"), other.assign(blocks="b")]), by=["blocks"])
    merged = merged.set_index(["blocks", "method", "variant", "tau"]).loc["a"]
    for key in (("daam", "all", 0.4), ("selective", "k=10", 0.5)):
        expected = job.loc[key, cols].to_numpy(float)
        for view in (fewer, merged, summarise(table).set_index(["method", "variant", "tau"])):
            np.testing.assert_array_equal(view.loc[key, cols].to_numpy(float), expected)
    assert job.loc[("selective", "k=10", 0.5), "ci95_lo"] != summarise(table, seed=1).set_index(
        ["method", "variant", "tau"]).loc[("selective", "k=10", 0.5), "ci95_lo"]  # the seed still matters


def test_degenerate_intervals_are_named_not_printed_as_cis(tmp_path):
    assert degenerate(0.5, 0.4, 0.6) == "" and degenerate(0.945, 0.947, 0.947) == "zero width"
    assert degenerate(0.945, 0.946, 0.95) == "excludes its estimate" and degenerate(0.5, np.nan, np.nan) == ""
    table = synthetic_table(n_prompts=6, taus=(0.4,))
    table.loc[table.method == "daam", "iou"] = 0.5  # the same IoU on every prompt: nothing for a bootstrap to vary
    summary = summarise(table)
    daam = next(line for line in verdict(summary).splitlines() if line.lstrip().startswith("DAAM"))
    assert "(degenerate CI: zero width)" in daam and "[0.5000, 0.5000]" not in daam
    md = write_summary(summary, tmp_path, ["# test run"])
    assert "(degenerate CI: zero width)" in md


# --- tables ------------------------------------------------------------------------------------------------


def test_summary_files(tmp_path):
    table = curve_table()
    summary = summarise(table)
    assert curve_methods(summary) == {"kcurve"}
    md = write_summary(summary, tmp_path, ["# test run"])
    assert (tmp_path / "summary.csv").exists() and "\\begin{tabular}" in (tmp_path / "summary.tex").read_text()
    assert "| daam" in md and "best k=8 (in-sample)" in md
    assert pd.read_csv(tmp_path / "summary.csv").shape[0] == len(summary) == 3 + 20
    assert "kcurve" not in verdict(summary)  # a k-curve's best k is chosen in-sample: the table has it, not the verdict


def test_single_tau_views_show_the_oracle_at_its_tau_and_daam_once():
    summary = sweep_summary()
    lines = verdict(summary, ["relevance"], "sweep").splitlines()[1:]
    daam = [ln.split() for ln in lines if ln.startswith("  ") and " DAAM " in ln]
    assert daam == [["relevance=hrv,random", "DAAM", "0.5428", "[0.3142,", "0.6769]", "n=22"],
                    ["relevance=oracle", "DAAM", "tau=0.5", "0.3677", "[0.2165,", "0.5361]", "n=22"]]
    oracle = [ln for ln in lines if ln.lstrip().startswith("relevance=oracle") and "selective" in ln]
    assert len(oracle) == 1 and "selective k=20 tau=0.5" in oracle[0]
    assert len(lines) == 2 + 3 + 1  # daam x2 (hrv and random pooled), selective per config, conclusion


def test_verdict_columns_align_at_any_label_length():
    summary = sweep_summary()
    summary["relevance"] = summary["relevance"].replace({"hrv": "hrv_" + "x" * 60})
    rows = [ln for ln in verdict(summary, ["relevance"], "sweep").splitlines() if " selective " in ln]
    assert len({ln.index("selective") for ln in rows}) == 1 and len({ln.index("Δ") for ln in rows}) == 1


def test_conclusion_is_worded_by_the_signs_and_cis():
    summary = sweep_summary()
    sel = summary[(summary.method == "selective") & summary.tau.isin([0.4])].set_index(["relevance", "variant"])
    assert [side(sel.loc[("random", k)]) for k in ("k=10", "k=20")] == ["worse", "worse"]  # CIs below 0
    text = verdict(summary, ["relevance"], "sweep").splitlines()[-1]
    assert "lose to DAAM at every k with relevance=random" in text
    assert "do not differ clearly from DAAM at any k with relevance=oracle" in text
    for_hrv = [side(sel.loc[("hrv", k)]) for k in ("k=10", "k=20")]  # at tau 0.4, the verdict's
    assert for_hrv == ["better", "unclear"]
    assert "compare mixed (better at k=10; unclear at k=20) with relevance=hrv" in text
    moved = summary.copy()  # shift every selective CI above 0: the conclusion follows
    is_sel = moved.method == "selective"
    moved.loc[is_sel, ["diff_ci95_lo", "diff_ci95_hi"]] = [[0.01, 0.02]]
    assert "beat DAAM at every k with relevance=hrv, relevance=random, relevance=oracle" in verdict(
        moved, ["relevance"], "sweep").splitlines()[-1]


