"""Aggregate + score: stored head maps and masks -> one long IoU table.

One row per (sample, word, method, variant). Pairs without a reference mask are rows too, with
`iou` NaN and `excluded` set to the reason, so summaries count them instead of dropping them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from bench.aggregate import mean_of_heads, ranked_heads, resolve_k, word_head_maps
from bench.cache import StageStore
from bench.heads import HeadIndex
from bench.relevance import Relevance
from bench.score import heat_to_mask, iou
from bench.segment import load_word_masks


@dataclass
class Context:
    head_index: HeadIndex
    daam_latent_hw: int
    relevance: Relevance | None


class Method(ABC):
    name: str

    @abstractmethod
    def heat_maps(self, head_maps: torch.Tensor, word: str, ctx: Context) -> dict[str, tuple[int, torch.Tensor]]:
        """head_maps (H, s, s) -> {variant: (number of heads used, heat map (s, s))}."""


class Daam(Method):
    """daam 0.2.0: mean over its default heads (up + down blocks, no mid, no 8x8 maps)."""

    name = "daam"

    def heat_maps(self, head_maps, word, ctx):
        selected = ctx.head_index.daam_mask(ctx.daam_latent_hw)
        return {"all": (int(selected.sum()), mean_of_heads(head_maps, selected))}


class Selective(Method):
    """Mean of the k most (order=top) or least (order=bottom) relevant heads, for each k in `k`."""

    def __init__(self, k: list | int | float | str, order: str = "top", blocks: list[str] | None = None,
                 resolutions: list[int] | None = None):
        if order not in ("top", "bottom"):
            raise ValueError(f"method order must be top or bottom, got {order!r}")
        self.k = [k] if isinstance(k, (int, float, str)) else list(k)
        self.order = order
        self.blocks = list(blocks) if blocks else None
        self.resolutions = list(resolutions) if resolutions else None
        self.name = "selective" if order == "top" else "bottom_k"

    def heat_maps(self, head_maps, word, ctx):
        if ctx.relevance is None:
            raise ValueError("selective aggregation needs a relevance source (relevance=...)")
        allowed = ctx.head_index.mask(self.blocks, self.resolutions)
        order = ranked_heads(ctx.relevance.vector(word, ctx.head_index), allowed, descending=self.order == "top")
        out = {}
        for k in self.k:
            n = resolve_k(k, len(order))
            # heads summed in HeadIndex order, so DAAM's head set gives DAAM's map bit for bit
            out[f"k={k}"] = (n, mean_of_heads(head_maps, np.sort(order[:n])))
        return out


def evaluate_stage(samples: list, gen_store: StageStore, mask_store: StageStore, methods: list[Method],
                   relevance: Relevance | None, tau: float) -> pd.DataFrame:
    """Score every (sample, word) with every method variant; returns the long table."""
    geometry = gen_store.load_json("model.json")
    head_index = HeadIndex.from_json(gen_store.file("head_index.json").read_text())
    ctx = Context(head_index, geometry["daam_latent_hw"], relevance)
    rows = []
    for sample in tqdm(samples, desc="aggregate+score", unit="sample"):
        stored = gen_store.load_torch(f"samples/{sample.id}.pt")
        masks = load_word_masks(mask_store, sample.id)
        base = {"sample_id": sample.id, "prompt_id": sample.row.id, "seed": sample.seed, "tau": tau}
        for word, slots in stored["words"].items():
            ref = masks[word]
            head_maps = word_head_maps(stored["maps"], head_index, slots, geometry["heatmap_size"])
            for method in methods:
                for variant, (n_heads, heat) in method.heat_maps(head_maps, word, ctx).items():
                    row = {**base, "word": word, "method": method.name, "variant": variant, "n_heads": n_heads,
                           "iou": float("nan"), "excluded": ref.reason}
                    if ref.mask is not None:
                        pred = heat_to_mask(heat, ref.mask.shape, tau)
                        row["iou"] = float(iou(pred, torch.from_numpy(ref.mask)))
                        if np.isnan(row["iou"]):
                            row["excluded"] = "empty prediction and reference"
                    rows.append(row)
    return pd.DataFrame(rows)
