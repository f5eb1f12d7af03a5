"""Head diagnostics: Spearman rho between head relevance and single-head held-out IoU, with a bootstrap CI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import REPO
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from scipy.stats import norm, spearmanr

from bench.analyses.head_diagnostics import (
    HeadDiagnostics,
    PartPairs,
    bias_corrected_interval,
    head_groups,
    source_rho,
    spearman_rows,
)
from bench.heads import HeadIndex, Layer
from bench.run import run


def test_spearman_rows_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 30).astype(float)  # many ties
    y = rng.integers(0, 4, (6, 30)).astype(float)
    expected = [spearmanr(x, row).statistic for row in y]
    np.testing.assert_allclose(spearman_rows(x, y), expected, rtol=1e-12)
    assert np.isnan(spearman_rows(np.ones(30), y)).all()


def constructed(n_prompts: int = 8, n_heads: int = 12, seed: int = 1):
    """Two words, two pairs per prompt each; per-word head quality plus pair noise -> single-head IoUs."""
    rng = np.random.default_rng(seed)
    quality = rng.random((2, n_heads))  # (W, H)
    pair_prompt = np.repeat(np.arange(n_prompts), 4)  # (P,): per prompt 2 pairs of word 0, then 2 of word 1
    pair_word = np.tile([0, 0, 1, 1], n_prompts)
    ious = np.clip(quality[pair_word] + 0.3 * rng.standard_normal((len(pair_word), n_heads)), 0, 1)  # (P, H)
    rows = [np.flatnonzero(pair_word == w) for w in range(2)]
    return ious, pair_prompt, pair_word, rows


def test_rho_is_one_when_relevance_is_monotone_in_single_head_iou():
    ious, pair_prompt, _, rows = constructed()
    mean_iou = np.stack([ious[r].mean(0) for r in rows])  # (W, H)
    part = PartPairs(0, np.exp(3 * mean_iou) - 7, rows)  # a strictly increasing function of each head's mean IoU
    heads = np.arange(ious.shape[1])
    rho = source_rho([part], ious, pair_prompt, heads, np.ones((1, 8)))
    np.testing.assert_allclose(rho, [1.0])
    reversed_part = PartPairs(0, -mean_iou, rows)
    np.testing.assert_allclose(source_rho([reversed_part], ious, pair_prompt, heads, np.ones((1, 8))), [-1.0])


def test_rho_is_the_pair_weighted_mean_of_scipy_per_word_and_part():
    ious, pair_prompt, pair_word, rows = constructed()
    rng = np.random.default_rng(2)
    heads = np.array([0, 2, 3, 5, 7, 8, 11])
    # two parts (folds): prompts 0-2 and 3-7, each with its own relevance
    parts, expected, weight = [], [], []
    for index, prompts in enumerate([range(0, 3), range(3, 8)]):
        relevance = rng.random((2, ious.shape[1]))
        part_rows = [r[np.isin(pair_prompt[r], list(prompts))] for r in rows]
        parts.append(PartPairs(index, relevance, part_rows))
        for w, r in enumerate(part_rows):
            expected.append(spearmanr(relevance[w, heads], ious[np.ix_(r, heads)].mean(0)).statistic)
            weight.append(len(r))
    rho = source_rho(parts, ious, pair_prompt, heads, np.ones((1, 8)))
    np.testing.assert_allclose(rho, [np.average(expected, weights=weight)], rtol=1e-12)
    # a resample counting prompt 0 three times and dropping prompt 1 equals that duplicated data set
    counts = np.array([[3, 0, 1, 1, 1, 1, 1, 1]])
    dup_rows = np.concatenate([np.flatnonzero(pair_prompt == p) for p in range(8) for _ in range(counts[0, p])])
    dup_parts = [PartPairs(p.index, p.relevance, [dup_rows[np.isin(dup_rows, r)] for r in p.pair_rows])
                 for p in parts]
    direct = [(spearmanr(p.relevance[w, heads], ious[np.ix_(r, heads)].mean(0)).statistic, len(r))
              for p in dup_parts for w, r in enumerate(p.pair_rows)]
    np.testing.assert_allclose(source_rho(parts, ious, pair_prompt, heads, counts),
                               [np.average([d for d, _ in direct], weights=[n for _, n in direct])], rtol=1e-12)
    assert set(pair_word) == {0, 1}


def test_bias_corrected_interval():
    boot = np.random.default_rng(3).standard_normal(20001)
    centred = bias_corrected_interval(float(np.median(boot)), boot)  # no bias: the plain percentile interval
    np.testing.assert_allclose(centred, np.quantile(boot, [0.025, 0.975]), atol=0.02)
    # resamples centred 0.5 below the estimate: the interval moves up, to percentiles Phi(2 z0 -+ 1.96)
    z0 = 0.5
    expected = np.quantile(boot, norm.cdf([2 * z0 - 1.959964, 2 * z0 + 1.959964]))
    np.testing.assert_allclose(bias_corrected_interval(0.5, boot), expected, atol=0.02)
    assert np.isnan(bias_corrected_interval(0.1, np.array([np.nan]))).all()


def test_head_groups_by_block_and_resolution():
    index = HeadIndex([Layer("down", 0, 2, (16, 16), "a", 0), Layer("mid", 0, 2, (8, 8), "b", 2),
                       Layer("up", 0, 2, (16, 16), "c", 4)])
    groups = head_groups(index)
    assert list(groups) == ["all", "block down", "block mid", "block up", "res 16x16", "res 8x8"]
    np.testing.assert_array_equal(groups["res 16x16"], [0, 1, 4, 5])


def test_head_diagnostics_in_a_run(tmp_path, monkeypatch):
    """Smoke run (tiny SDXL, fixture masks) with the analysis: the run's source and both extras, every group."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "dataset.limit=3", "dataset.seeds=[0,1]", "model.generation.steps=2", "model.generation.batch_size=6",
            "report.figures=false",
            "+analyses.head_diagnostics._target_=bench.analyses.head_diagnostics.HeadDiagnostics",
            "+analyses.head_diagnostics.n_boot=50"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    run(cfg, tmp_path / "run")
    table = pd.read_csv(tmp_path / "run" / "head_diagnostics.csv")
    assert set(table["source"]) == {"random[5 draws]", "oracle[3 folds, held-out]"}  # run's random = the extra
    assert {"all", "block down", "block up"} <= set(table["group"])
    assert table["n_pairs"].nunique() == 1  # distinct pairs: every fold / draw scores the same pairs once
    ok = table["ci95_lo"].notna()
    assert ok.any() and (table.loc[ok, "ci95_lo"] <= table.loc[ok, "ci95_hi"]).all()
    assert (tmp_path / "run" / "head_diagnostics.png").stat().st_size > 0


def test_unknown_extra_source_is_refused():
    with pytest.raises(ValueError, match="oracle and random"):
        HeadDiagnostics(extra=["hrv"])
