"""Scoring: heat map -> binary mask (DAAM protocol) -> IoU against a reference mask."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def heat_to_mask(heat: torch.Tensor, image_hw: tuple[int, int], tau: float) -> torch.Tensor:
    """DAAM's `expand_as` + threshold: bicubic resize to the image, min-max normalise, `> tau`.

    heat: (s, s) or (K, s, s) -> bool (H, W) or (K, H, W); each map is normalised on its own.
    """
    return normalised_heat(heat, image_hw) > tau


def normalised_heat(heat: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize to image size, then per-map min-max to [0, 1] (eps 1e-8 as daam); a new tensor."""
    x = heat.float().reshape(-1, 1, *heat.shape[-2:])
    if tuple(x.shape[-2:]) != tuple(image_hw):  # bicubic at scale 1 is the identity, exactly: skip it
        x = F.interpolate(x, size=image_hw, mode="bicubic")
    else:
        x = x.clone(memory_format=torch.contiguous_format)
    return minmax_(x[:, 0]).reshape(*heat.shape[:-2], *image_hw)


def minmax_(x: torch.Tensor) -> torch.Tensor:
    """Per-map min-max of contiguous float maps (K, H, W) to [0, 1] in place, daam's arithmetic:
    (x - lo) / (hi - lo + 1e-8)."""
    flat = x.view(len(x), -1)  # (K, H*W)
    lo = flat.amin(1, keepdim=True)
    hi = flat.amax(1, keepdim=True)
    flat.sub_(lo).div_(hi - lo + 1e-8)
    return x


def iou(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks over the last two dims; pred (..., H, W), ref (H, W). NaN when both are empty."""
    if tuple(pred.shape[-2:]) != tuple(ref.shape):
        raise ValueError(f"mask shapes differ: {tuple(pred.shape[-2:])} vs {tuple(ref.shape)}")
    return torch.from_numpy(_iou_bits(_bits(pred.numpy()), _bits(ref.numpy())))


def ious_over_taus(norm: torch.Tensor, ref: torch.Tensor, taus: list[float]) -> np.ndarray:
    """IoU with ref (H, W) of `norm > tau` for normalised maps norm (..., H, W): (len(taus), ...) float64.
    The threshold runs in numpy (several times faster than torch's comparison to bool on CPU)."""
    values, ref_bits = norm.numpy(), _bits(ref.numpy())
    return np.stack([_iou_bits(_bits(values > tau), ref_bits) for tau in taus])


def _bits(mask: np.ndarray) -> np.ndarray:
    """Bool masks (..., H, W) -> (..., ceil(H*W / 8)) uint8, eight pixels per byte (zero padded)."""
    return np.packbits(mask.reshape(*mask.shape[:-2], -1), axis=-1)


def _iou_bits(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """IoU of bit-packed masks by population counts; NaN where the union is empty."""
    inter = np.bitwise_count(pred & ref).sum(-1, dtype=np.int64)
    union = np.bitwise_count(pred | ref).sum(-1, dtype=np.int64)
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)
