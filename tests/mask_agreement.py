"""Mask agreement of two segmenters (e.g. pseudo ground truth vs exact masks), pair by pair: the toolkit the
segmenter tests compare GroundedSam's backends and hand-made masks with. IoU is `bench.score.iou`'s."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from bench.score import iou
from bench.segment import WordMask


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (H, W) as a float; NaN when both are empty."""
    return float(iou(torch.from_numpy(np.asarray(a, dtype=bool)), torch.from_numpy(np.asarray(b, dtype=bool))))


def score_masks(pred: list[dict[str, WordMask]], ref: list[dict[str, WordMask]]):
    """Per (image, word) IoU of `pred` against `ref` (e.g. pseudo ground truth vs exact masks).

    One row per pair present in either side: image, word, iou (NaN when excluded), reason (missing, i.e.
    None/NaN, when scored; otherwise why the pair is excluded: "pred: <reason>", "ref: <reason>",
    "pred: missing", "both masks empty", joined by "; "), pred_area, ref_area (pixels, NaN without a mask).
    Masks of a pair must have the same shape (ValueError otherwise)."""
    if len(pred) != len(ref):
        raise ValueError(f"{len(pred)} predicted images vs {len(ref)} reference images")
    rows = []
    for i, (p_img, r_img) in enumerate(zip(pred, ref)):
        words = list(p_img) + [w for w in r_img if w not in p_img]
        for word in words:
            p, r = p_img.get(word), r_img.get(word)
            reasons = []
            if p is None:
                reasons.append("pred: missing")
            elif p.reason is not None:
                reasons.append(f"pred: {p.reason}")
            if r is None:
                reasons.append("ref: missing")
            elif r.reason is not None:
                reasons.append(f"ref: {r.reason}")
            p_mask = p.mask if p is not None else None
            r_mask = r.mask if r is not None else None
            value = math.nan
            if not reasons:
                value = mask_iou(p_mask, r_mask)
                if math.isnan(value):
                    reasons.append("both masks empty")
            rows.append({
                "image": i, "word": word, "iou": value, "reason": "; ".join(reasons) if reasons else None,
                "pred_area": int(p_mask.sum()) if p_mask is not None else math.nan,
                "ref_area": int(r_mask.sum()) if r_mask is not None else math.nan,
            })
    return pd.DataFrame(rows, columns=["image", "word", "iou", "reason", "pred_area", "ref_area"])


def summarise_mask_agreement(df) -> dict:
    """Mean IoU over scored pairs, how many were scored, and how many were excluded, by reason."""
    scored = df[df["reason"].isna()]
    excluded = df[df["reason"].notna()]
    return {
        "mean_iou": float(scored["iou"].mean()) if len(scored) else math.nan,
        "median_iou": float(scored["iou"].median()) if len(scored) else math.nan,
        "n": int(len(scored)),
        "n_pairs": int(len(df)),
        "n_excluded": int(len(excluded)),
        "excluded": {str(k): int(v) for k, v in excluded["reason"].value_counts().sort_index().items()},
    }
