"""Methods and the long table: DAAM, selective, the k-curve against independent computations (numpy loops)."""

import numpy as np
import pytest
import torch
from helpers import FixedRelevance, two_resolution_index

from bench.aggregate import mean_of_heads, top_k_curve
from bench.evaluate import Context, Daam, KCurve, Selective, long_table


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


def test_daam_and_selective_share_the_method_protocol():
    index = two_resolution_index()
    ctx = Context(index, 256, FixedRelevance(np.arange(len(index), dtype=float)), 16)
    maps = torch.rand(len(index), 16, 16)
    ref = torch.from_numpy(np.random.default_rng(3).random((16, 16)) > 0.5)
    variants, n, ious = Daam().ious(maps, "w", ctx, ref, [0.4])
    heat = maps[torch.from_numpy(index.daam_mask(256))].mean(0).numpy()
    pred = (heat - heat.min()) / (heat.max() - heat.min() + 1e-8) > 0.4
    assert variants == ["all"] and ious[0, 0] == pytest.approx((pred & ref.numpy()).sum() / (pred | ref.numpy()).sum())


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
