"""Aggregation: stored per-head maps -> word heat maps (pure tensor code).

DAAM (daam 0.2.0 semantics): each (head, token) map, summed over steps, is bicubic-upsampled to a
common grid and clamped at 0; the word map is the mean over DAAM's heads and the word's tokens.
Selective: the same upsampled maps, averaged over the top-k heads of a relevance vector. All k at
once is a cumulative sum over heads sorted by relevance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.heads import HeadIndex


def word_head_maps(maps: dict[tuple[int, int], torch.Tensor], head_index: HeadIndex, slots: list[int],
                   size: int, buckets: list[int] | None = None) -> torch.Tensor:
    """Per-head maps of one word: fp32 (H, size, size), heads in HeadIndex order.

    maps[res]: (S, H_r, T, h, w) as stored for one sample; slots: the word's token slots (into T);
    buckets: step buckets to sum (None = all).
    """
    out = torch.empty(len(head_index), size, size, dtype=torch.float32)
    for res, stored in maps.items():
        x = stored.float()
        x = x[buckets].sum(0) if buckets is not None else x.sum(0)  # (H_r, T, h, w)
        x = x[:, slots]  # (H_r, n_tokens, h, w)
        x = F.interpolate(x, size=(size, size), mode="bicubic").clamp_(min=0)
        out[torch.from_numpy(head_index.heads_at(res))] = x.mean(1)  # (H_r, size, size)
    return out


def mean_of_heads(head_maps: torch.Tensor, selected: np.ndarray) -> torch.Tensor:
    """Mean over the selected heads: head_maps (H, s, s), selected bool (H,) or int indices -> (s, s)."""
    idx = torch.from_numpy(np.flatnonzero(selected) if selected.dtype == bool else selected)
    if idx.numel() == 0:
        raise ValueError("no heads selected")
    return head_maps[idx].mean(0)


def resolve_k(k: int | float | str, n_heads: int) -> int:
    """k as a count (10), a fraction (0.25) or a percentage string ('25%') of n_heads; 'all' = n_heads."""
    if isinstance(k, str):
        k = n_heads if k == "all" else float(k.rstrip("%")) / 100 if k.endswith("%") else int(k)
    if isinstance(k, float):
        if not 0 < k <= 1:
            raise ValueError(f"k fraction must be in (0, 1], got {k}")
        k = max(1, round(k * n_heads))
    if not 1 <= k <= n_heads:
        raise ValueError(f"k={k} is outside 1..{n_heads} (the heads available)")
    return int(k)


def ranked_heads(relevance: np.ndarray, allowed: np.ndarray | None = None, descending: bool = True) -> np.ndarray:
    """Indices of allowed heads sorted by relevance (stable: ties keep HeadIndex order)."""
    idx = np.arange(len(relevance)) if allowed is None else np.flatnonzero(allowed)
    order = np.argsort(-relevance[idx] if descending else relevance[idx], kind="stable")
    return idx[order]


def top_k_curve(head_maps: torch.Tensor, order: np.ndarray) -> torch.Tensor:
    """Mean of the first k heads of `order` for every k at once: (len(order), s, s)."""
    csum = head_maps[torch.from_numpy(order)].cumsum(0)  # (K, s, s)
    return csum / torch.arange(1, len(order) + 1, dtype=csum.dtype)[:, None, None]
