"""Summaries, k-curve scoring and figures, checked against independent computations (loops, numpy, scipy)."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from helpers import FixedRelevance

from bench.aggregate import resize_bicubic, top_k_curve, word_head_maps
from bench.evaluate import Context, Daam, KCurve, Selective, long_table
from bench.figures import groups_figure, kcurve_figure, tau_figure, write_figures
from bench.heads import HeadIndex, Layer
from bench.report import compact, curve_methods, summarise, write_summary


def synthetic_table(n_prompts=30, seeds=(0, 1), taus=(0.4, 0.5), gain=0.03, seed=0) -> pd.DataFrame:
    """daam + selective (2 variants) rows; prompt p has 1 + p % 2 words; pairs of prompt 0 are excluded."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        level = rng.uniform(0.2, 0.8)
        for s in seeds:
            for w in range(1 + p % 2):
                base = level + 0.05 * rng.standard_normal()
                for tau in taus:
                    excluded = "no detection" if p == 0 else None
                    for method, variant, shift in (("daam", "all", 0.0), ("selective", "k=10", gain),
                                                   ("selective", "k=20", 0.0)):
                        iou = np.nan if excluded else base + shift + 0.02 * rng.standard_normal() - tau / 10
                        rows.append({"sample_id": f"p{p}__s{s}", "prompt_id": f"p{p}", "seed": s, "tau": tau,
                                     "word": f"w{w}", "method": method, "variant": variant, "n_heads": 10,
                                     "iou": iou, "excluded": excluded})
    return pd.DataFrame(rows)


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


# --- k-curve scoring -------------------------------------------------------------------------------------




def two_resolution_index() -> HeadIndex:
    return HeadIndex([Layer("down", 0, 6, (16, 16), "a", 0), Layer("mid", 0, 4, (8, 8), "b", 6),
                      Layer("up", 0, 8, (16, 16), "c", 10)])


def test_resize_bicubic_and_head_maps_match_torch_interpolate():
    for shape, size in (((5, 2, 8, 8), (16, 16)), ((3, 1, 16, 12), (64, 64)), ((2, 1, 16, 16), (8, 8))):
        x = torch.rand(shape) * 5
        torch.testing.assert_close(resize_bicubic(x, size), F.interpolate(x, size=size, mode="bicubic"),
                                   atol=1e-5, rtol=1e-5)
    index = two_resolution_index()
    maps = {(16, 16): torch.rand(2, 14, 3, 16, 16), (8, 8): torch.rand(2, 4, 3, 8, 8)}
    out = torch.full((3, 16, 16), np.nan)
    assert resize_bicubic(maps[(8, 8)][0, :3, 0], (16, 16), out=out) is out and not out.isnan().any()
    for slots in ([0, 2], [1]):  # several tokens (mean of the clamped maps), one token (resized in place)
        got = word_head_maps(maps, index, slots, 16)
        for res, stored in maps.items():  # reference: daam's order of operations with F.interpolate
            x = F.interpolate(stored.sum(0)[:, slots], size=(16, 16), mode="bicubic").clamp(min=0).mean(1)
            torch.testing.assert_close(got[torch.from_numpy(index.heads_at(res))], x, atol=1e-5, rtol=1e-5)


def test_kcurve_equals_selective_for_every_k_and_compares_on_the_grid():
    index = two_resolution_index()
    rng = np.random.default_rng(0)
    ctx = Context(index, 256, FixedRelevance(rng.random(len(index))), 16)
    maps = torch.rand(len(index), 16, 16, generator=torch.Generator().manual_seed(0)) ** 3
    ref = torch.from_numpy(rng.random((32, 32)) > 0.6)
    taus = [0.3, 0.5]
    variants, ks, curve = KCurve(size=None).ious(maps, "w", ctx, ref, taus)
    _, n, exact = Selective(k=list(range(1, len(index) + 1))).ious(maps, "w", ctx, ref, taus)
    assert variants == [f"k={k}" for k in range(1, 19)] and np.array_equal(ks, n)
    np.testing.assert_array_equal(curve, exact)  # image size: exactly the selective protocol

    # on the 16x16 grid: heat maps min-max'd there, the 32 px reference area-downsampled (>= half covered)
    method = KCurve(size=16, step=5)
    method.chunk = 2  # several chunks, some without a scored k
    _, _, grid = method.ious(maps, "w", ctx, ref, taus)
    small = ref.numpy().reshape(16, 2, 16, 2).mean((1, 3)) >= 0.5
    order = np.argsort(-ctx.relevance.v, kind="stable")
    for j, k in enumerate([1, 6, 11, 16, 18]):
        heat = maps[torch.from_numpy(order[:k])].mean(0).numpy()
        norm = (heat - heat.min()) / (heat.max() - heat.min() + 1e-8)
        for t, tau in enumerate(taus):
            pred = norm > tau
            assert grid[t, j] == pytest.approx((pred & small).sum() / (pred | small).sum(), abs=1e-12)
    _, _, none = KCurve().ious(maps, "w", ctx, None, taus)
    assert np.isnan(none).all() and none.shape == (2, 18)


def test_top_k_curve_running_mean_and_long_table_rows():
    maps, order = torch.rand(40, 5, 5), np.random.default_rng(2).permutation(40)
    curve = top_k_curve(maps, order)
    for k in (1, 13, 40):
        torch.testing.assert_close(curve[k - 1], maps[torch.from_numpy(order[:k])].mean(0))
    base = {"sample_id": "a__s0", "prompt_id": "a", "seed": 0, "word": "cat", "method": "m", "excluded": None}
    table = long_table([{**base, "tau": 0.3, "variant": ["k=1", "k=2"], "n_heads": np.array([1, 2]),
                         "iou": np.array([0.5, np.nan])},
                        {**base, "tau": 0.5, "variant": ["k=1", "k=2"], "n_heads": np.array([1, 2]),
                         "iou": np.array([np.nan, np.nan]), "excluded": "no detection"}])
    assert list(table.tau) == [0.3, 0.3, 0.5, 0.5] and list(table.n_heads) == [1, 2, 1, 2]
    undefined = "undefined IoU (empty masks or no map)"
    assert list(table.excluded.fillna("")) == ["", undefined, "no detection", "no detection"]


# --- tables and figures ------------------------------------------------------------------------------------


def curve_table() -> pd.DataFrame:
    table = synthetic_table(n_prompts=8, taus=(0.4,))
    curve = table[table.variant == "k=10"].copy()
    parts = [table]
    for k in range(1, 21):
        parts.append(curve.assign(method="kcurve", variant=f"k={k}", n_heads=k, iou=curve.iou - abs(k - 8) / 100))
    return pd.concat(parts, ignore_index=True)


def test_summary_files_compact_and_figures(tmp_path):
    table = curve_table()
    summary = summarise(table)
    assert curve_methods(summary) == {"kcurve"}
    md = write_summary(summary, tmp_path, ["# test run"])
    assert (tmp_path / "summary.csv").exists() and "\\begin{tabular}" in (tmp_path / "summary.tex").read_text()
    assert "| daam" in md and "best k=8 (in-sample)" in md
    assert pd.read_csv(tmp_path / "summary.csv").shape[0] == len(summary) == 3 + 20
    text = compact(summary)
    assert "kcurve (20 k)" in text and "best k=8" in text and len(text.splitlines()) == 5

    fig = kcurve_figure(summary)
    line = next(ln for ln in fig.axes[0].lines if ln.get_label().startswith("kcurve"))
    expect = summary[summary.method == "kcurve"].sort_values("n_heads")
    np.testing.assert_allclose(line.get_xdata(), expect.n_heads)
    np.testing.assert_allclose(line.get_ydata(), expect.mIoU)
    bars = groups_figure(summary).axes[0].patches
    points = summary[summary.method != "kcurve"]
    np.testing.assert_allclose(sorted(b.get_width() for b in bars), sorted(points.mIoU))

    image = np.zeros((32, 32, 3), np.uint8)
    cell = {"heat": np.random.rand(16, 16).astype(np.float32), "mask": np.eye(32, dtype=bool), "tau": 0.4}
    overlays = {"items": [{"title": "a s0: cat", "image": image, "ref": np.eye(32, dtype=bool),
                           "maps": {"daam all": cell}}]}
    paths = write_figures(summary, tmp_path, overlays=overlays)
    assert [p.name for p in paths] == ["fig_kcurve.png", "fig_groups.png", "fig_tau.png", "fig_overlays.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_daam_and_selective_share_the_method_protocol():
    index = two_resolution_index()
    ctx = Context(index, 256, FixedRelevance(np.arange(len(index), dtype=float)), 16)
    maps = torch.rand(len(index), 16, 16)
    ref = torch.from_numpy(np.random.default_rng(3).random((16, 16)) > 0.5)
    variants, n, ious = Daam().ious(maps, "w", ctx, ref, [0.4])
    heat = maps[torch.from_numpy(index.daam_mask(256))].mean(0).numpy()
    pred = (heat - heat.min()) / (heat.max() - heat.min() + 1e-8) > 0.4
    assert variants == ["all"] and ious[0, 0] == pytest.approx((pred & ref.numpy()).sum() / (pred | ref.numpy()).sum())


def sweep_summary() -> pd.DataFrame:
    """A merged sweep over relevance: DAAM's pairs are the same in the hrv and random jobs; the held-out oracle
    is scored at its calibrated tau (0.5) only, and with one k."""
    hrv = synthetic_table(n_prompts=8)
    random = hrv.assign(iou=np.where(hrv.method == "daam", hrv.iou, hrv.iou - 0.1))
    oracle = synthetic_table(n_prompts=8, taus=(0.5,), gain=0.2).query("variant != 'k=10'")
    tables = [t.assign(relevance=name) for name, t in (("hrv", hrv), ("random", random), ("oracle", oracle))]
    return summarise(pd.concat(tables, ignore_index=True), by=["relevance"])


def test_single_tau_views_show_the_oracle_at_its_tau_and_daam_once():
    summary = sweep_summary()
    lines = compact(summary, ["relevance"]).splitlines()[1:]
    daam = [ln for ln in lines if " daam all" in ln]
    assert len(daam) == 2 and daam[0].lstrip().startswith("2 configs daam all")  # hrv and random: one line
    assert daam[1].lstrip().startswith("relevance=oracle daam all tau=0.5")
    oracle = [ln for ln in lines if ln.lstrip().startswith("relevance=oracle selective")]
    assert len(oracle) == 1 and "selective k=20 tau=0.5" in oracle[0]
    assert len(lines) == 2 + 2 * 2 + 1  # daam x2, hrv and random selective x2 each, oracle selective
    labels = [t.get_text() for t in groups_figure(summary, ["relevance"]).axes[0].get_yticklabels()]
    assert "relevance=oracle selective k=20 tau=0.5" in labels and len(labels) == 3 + 3 + 2


def test_tau_figure_colours_one_method_alike_in_every_panel_with_one_legend():
    summary = sweep_summary()
    fig = tau_figure(summary, ["relevance"])
    colours = {}
    for ax in fig.axes:
        for container in ax.containers:  # one errorbar per (method, variant)
            colours.setdefault(container.get_label(), set()).add(container.lines[0].get_color())
    assert set(colours) == {"daam all", "selective k=10", "selective k=20"}
    assert all(len(c) == 1 for c in colours.values()) and len({c.pop() for c in colours.values()}) == 3
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    assert kcurve_figure(summary, ["relevance"]).axes[0].texts[0].get_text().startswith("no k-curve in this run")
