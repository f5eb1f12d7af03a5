"""Aggregation (head maps, top-k means and curves) and scoring (DAAM binarisation, IoU) against references."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import two_resolution_index

from bench.aggregate import ranked_heads, resize_bicubic, resolve_k, running_sum_, top_k_curve, word_head_maps
from bench.score import heat_to_mask, iou, ious_over_taus, normalised_heat


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
    odd = rng.random((3, 7, 9)) > 0.5, rng.random((7, 9)) > 0.5  # 63 pixels: the packed bits are zero padded
    np.testing.assert_allclose(iou(*map(torch.from_numpy, odd)).numpy(), [iou_numpy(p, odd[1]) for p in odd[0]])


def test_ious_over_taus_is_heat_to_mask_then_iou():
    rng = np.random.default_rng(3)
    heat, ref = torch.rand(5, 11, 13) ** 2, rng.random((11, 13)) > 0.5
    taus = [0.2, 0.4, 0.7]
    got = ious_over_taus(normalised_heat(heat, (11, 13)), torch.from_numpy(ref), taus)
    want = [[iou_numpy(m, ref) for m in heat_to_mask(heat, (11, 13), tau).numpy()] for tau in taus]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got.shape == (3, 5) and len(np.unique(got)) > 3


def test_heat_to_mask_normalises_each_map():
    heat = torch.zeros(2, 8, 8)
    heat[0, :4] = 1.0
    heat[1, :4] = 100.0  # same shape, other scale: same mask
    masks = heat_to_mask(heat, (32, 32), 0.4)
    assert masks.shape == (2, 32, 32) and torch.equal(masks[0], masks[1])
    assert masks[0, :14].all() and not masks[0, 18:].any()
    turned = heat.transpose(1, 2)  # a strided view: normalised on a copy, the caller's maps untouched
    assert torch.equal(heat_to_mask(turned, (8, 8), 0.4), heat_to_mask(heat, (8, 8), 0.4).transpose(1, 2))
    assert torch.equal(turned, heat.transpose(1, 2)) and heat[1, 0, 0] == 100.0


@pytest.mark.parametrize("k, expect", [(10, 10), ("10", 10), (0.25, 29), ("0.25", 29), ("25%", 29), ("all", 116),
                                       ("100%", 116), (1, 1), (1.0, 1), ("1.0", 1), (116.0, 116)])
def test_resolve_k(k, expect):
    assert resolve_k(k, 116) == expect


@pytest.mark.parametrize("k", [0, -1, 117, "0%", "150%", 1.5, "foo", "", True])
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


@pytest.mark.parametrize("n", [1, 2, 7, 9, 64, 70])
def test_running_sum_equals_cumsum(n):
    x = torch.rand(n, 3, 4, dtype=torch.float64)
    want = x.cumsum(0)
    assert running_sum_(x) is x
    torch.testing.assert_close(x, want, rtol=1e-12, atol=1e-12)


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
