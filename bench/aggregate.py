"""Aggregation: stored per-head maps -> word heat maps (pure tensor code).

DAAM (daam 0.2.0 semantics): each (head, token) map, summed over steps, is bicubic-upsampled to a
common grid and clamped at 0; the word map is the mean over DAAM's heads and the word's tokens.
Selective: the same upsampled maps, averaged over the top-k heads of a relevance vector. All k at
once is a cumulative sum over heads sorted by relevance.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from bench.checks import parse_k
from bench.heads import HeadIndex


def word_head_maps(maps: dict[tuple[int, int], torch.Tensor], head_index: HeadIndex, slots: list[int],
                   size: int, buckets: list[int] | None = None) -> torch.Tensor:
    """Per-head maps of one word: fp32 (H, size, size), heads in HeadIndex order.

    maps[res]: (S, H_r, T, h, w) as stored for one sample; slots: the word's token slots (into T);
    buckets: step buckets to sum (None = all). Each run of consecutive heads is resized straight into
    its rows of the output (no gather afterwards).
    """
    out = torch.empty(len(head_index), size, size, dtype=torch.float32)
    slot_index = torch.tensor(slots)
    for res, stored in maps.items():
        x = stored[buckets] if buckets is not None else stored
        x = _sum0(x.index_select(2, slot_index)).float()  # (H_r, n_tokens, h, w)
        for first, start, stop in _runs(head_index.heads_at(res)):
            part, rows = x[first: first + stop - start], out[start:stop]  # (n, n_tokens, h, w), (n, size, size)
            if len(slots) == 1:
                resize_bicubic(part[:, 0], (size, size), out=rows).clamp_(min=0)
            else:
                torch.mean(resize_bicubic(part, (size, size)).clamp_(min=0), 1, out=rows)
    return out


def _runs(heads: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of consecutive values in sorted `heads`: (position of the run in heads, first value, last + 1)."""
    breaks = np.flatnonzero(np.diff(heads) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(heads)]])
    return [(int(a), int(heads[a]), int(heads[b - 1]) + 1) for a, b in zip(starts, stops) if b > a]


def _sum0(x: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0; x[0] when it has one entry (torch's CPU sum over a size-1 dim is ~4x a copy)."""
    return x[0] if len(x) == 1 else x.sum(0)


@functools.lru_cache(maxsize=32)
def bicubic_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix of torch's 1-D bicubic resize (align_corners=False, clamped borders).

    Built by resizing the unit vectors with F.interpolate itself, so it is torch's kernel, not a copy.
    """
    basis = torch.eye(n_in, dtype=torch.float64)[:, None, :, None].expand(n_in, 1, n_in, 4)
    return F.interpolate(basis, size=(n_out, 4), mode="bicubic")[:, 0, :, 0].T.float().contiguous()


def resize_bicubic(x: torch.Tensor, size: tuple[int, int], out: torch.Tensor | None = None) -> torch.Tensor:
    """F.interpolate(x, size, mode="bicubic") for x (..., h, w) as two matrix products (torch's 2-D
    bicubic is separable): equal to it within float rounding and ~4x faster on CPU for many small maps.
    `out`, when given, receives the result (..., H, W) and is returned."""
    if tuple(x.shape[-2:]) == tuple(size):  # bicubic at scale 1 is the identity, exactly
        return x.clone() if out is None else out.copy_(x)
    rows = bicubic_matrix(x.shape[-2], size[0])  # (H, h)
    cols = bicubic_matrix(x.shape[-1], size[1])  # (W, w)
    half = x.reshape(-1, *x.shape[-2:]) @ cols.T  # (N, h, W): leading dims folded (a 4-D matmul is ~5x slower)
    if out is None:
        return (rows @ half).view(*x.shape[:-2], *size)
    torch.matmul(rows, half, out=out.view(-1, *size))  # (N, H, W)
    return out


def mean_of_heads(head_maps: torch.Tensor, selected: np.ndarray) -> torch.Tensor:
    """Mean over the selected heads: head_maps (H, s, s), selected bool (H,) or int indices -> (s, s)."""
    idx = torch.from_numpy(np.flatnonzero(selected) if selected.dtype == bool else selected)
    if idx.numel() == 0:
        raise ValueError("no heads selected")
    return head_maps[idx].mean(0)


def resolve_k(k: int | float | str, n_heads: int) -> int:
    """k (see `parse_k`) as a number of heads out of n_heads."""
    spec = parse_k(k)
    n = spec if isinstance(spec, int) else max(1, round(spec * n_heads))
    if n > n_heads:
        raise ValueError(f"k={k} is more than the {n_heads} heads available")
    return n


def ranked_heads(relevance: np.ndarray, allowed: np.ndarray | None = None, descending: bool = True) -> np.ndarray:
    """Indices of allowed heads sorted by relevance (stable: ties keep HeadIndex order)."""
    idx = np.arange(len(relevance)) if allowed is None else np.flatnonzero(allowed)
    order = np.argsort(-relevance[idx] if descending else relevance[idx], kind="stable")
    return idx[order]


def top_k_curve(head_maps: torch.Tensor, order: np.ndarray) -> torch.Tensor:
    """Mean of the first k heads of `order` for every k at once: (len(order), s, s)."""
    return torch.cat([part for _, part in top_k_chunks(head_maps, order, len(order))])


def top_k_chunks(head_maps: torch.Tensor, order: np.ndarray, chunk: int = 128):
    """`top_k_curve` in pieces: yields (start, means of the first k heads for k = start+1 .. start+c), so a
    caller can score each piece while it is in the CPU cache. A running sum over heads in rank order."""
    total = torch.zeros(head_maps.shape[1:], dtype=head_maps.dtype)
    for start in range(0, len(order), chunk):
        part = head_maps.index_select(0, torch.from_numpy(order[start: start + chunk]))  # (c, s, s), a copy
        part[0] += total
        running_sum_(part)
        total = part[-1].clone()
        yield start, part.div_(torch.arange(start + 1, start + len(part) + 1, dtype=part.dtype)[:, None, None])


def running_sum_(x: torch.Tensor) -> torch.Tensor:
    """Cumulative sum over dim 0, in place, in two levels: within blocks of ~sqrt(n) rows, then each block
    plus the previous block's total. ~2 sqrt(n) tensor ops instead of n row additions (torch's CPU cumsum
    over dim 0 of (n, s*s) is slower than either)."""
    n = len(x)
    width = max(1, math.isqrt(n))
    n_blocks = n // width
    blocks = x[: n_blocks * width].view(n_blocks, width, *x.shape[1:])  # (B, width, ...)
    for j in range(1, width):
        blocks[:, j] += blocks[:, j - 1]
    for i in range(1, n_blocks):
        blocks[i] += blocks[i - 1, -1]
    for r in range(n_blocks * width, n):
        x[r] += x[r - 1]
    return x
