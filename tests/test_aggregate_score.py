import numpy as np
import pytest
import torch
from conftest import FixedRelevance

from bench.aggregate import mean_of_heads, ranked_heads, resolve_k, top_k_curve
from bench.evaluate import Context, Daam, Selective
from bench.score import heat_to_mask, iou


def iou_numpy(pred: np.ndarray, ref: np.ndarray) -> float:
    union = np.logical_or(pred, ref).sum()
    return float(np.logical_and(pred, ref).sum() / union) if union else float("nan")


def test_iou_matches_numpy_reference():
    rng = np.random.default_rng(0)
    ref = rng.random((40, 50)) > 0.6
    preds = rng.random((7, 40, 50)) > rng.random((7, 1, 1))
    got = iou(torch.from_numpy(preds), torch.from_numpy(ref)).numpy()
    np.testing.assert_allclose(got, [iou_numpy(p, ref) for p in preds], rtol=1e-12)
    empty = torch.zeros(40, 50, dtype=torch.bool)
    assert torch.isnan(iou(empty, empty))


def test_heat_to_mask_normalises_each_map():
    heat = torch.zeros(2, 8, 8)
    heat[0, :4] = 1.0
    heat[1, :4] = 100.0  # same shape, other scale: same mask
    masks = heat_to_mask(heat, (32, 32), 0.4)
    assert masks.shape == (2, 32, 32) and torch.equal(masks[0], masks[1])
    assert masks[0, :14].all() and not masks[0, 18:].any()


@pytest.mark.parametrize("k, expect", [(10, 10), ("10", 10), (0.25, 29), ("25%", 29), ("all", 116)])
def test_resolve_k(k, expect):
    assert resolve_k(k, 116) == expect


@pytest.mark.parametrize("k", [0, 117, "0%", 1.5])
def test_resolve_k_rejects(k):
    with pytest.raises(ValueError):
        resolve_k(k, 116)


def test_top_k_curve_equals_explicit_means():
    maps = torch.rand(30, 6, 6)
    relevance = np.random.default_rng(1).random(30)
    order = ranked_heads(relevance)
    assert np.all(np.diff(relevance[order]) <= 0)
    curve = top_k_curve(maps, order)
    for k in (1, 5, 17, 30):
        torch.testing.assert_close(curve[k - 1], maps[torch.from_numpy(order[:k])].mean(0))
    bottom = ranked_heads(relevance, descending=False)
    assert bottom[0] == relevance.argmin()




def test_selective_with_daam_heads_equals_daam_exactly(tiny):
    index = tiny.head_index()
    daam_heads = index.daam_mask(tiny.daam_latent_hw)
    maps = torch.rand(len(index), 64, 64)
    ctx = Context(index, tiny.daam_latent_hw, FixedRelevance(daam_heads.astype(float)))
    (n, daam_map), = Daam().heat_maps(maps, "w", ctx).values()
    (k, sel_map), = Selective(k=int(daam_heads.sum())).heat_maps(maps, "w", ctx).values()
    assert n == k == daam_heads.sum()
    assert torch.equal(daam_map, sel_map)


def test_selective_restricts_to_blocks(tiny):
    index = tiny.head_index()
    maps = torch.zeros(len(index), 4, 4)
    mid = index.mask(["mid"])
    maps[torch.from_numpy(mid)] = 1.0
    ctx = Context(index, tiny.daam_latent_hw, FixedRelevance(np.random.default_rng(0).random(len(index))))
    out = Selective(k=["all", 3], blocks=["mid"]).heat_maps(maps, "w", ctx)
    assert out["k=all"][0] == mid.sum() and torch.all(out["k=all"][1] == 1) and torch.all(out["k=3"][1] == 1)
    with pytest.raises(ValueError, match="no heads selected"):
        mean_of_heads(maps, np.zeros(len(index), bool))
