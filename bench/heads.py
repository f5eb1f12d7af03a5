"""HeadIndex: the one description of every cross-attention head, shared by all stages.

Global head order is the UNet's forward order: down blocks, mid block, up blocks (the order the
capture stores maps in, and HRV's order). Converters give DAAM's order (up, down, mid) and HRV's
head names (`down, layer: 18, head: 4`, layer counted within down / mid / up).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

from bench import BLOCKS

DAAM_BLOCK_ORDER = ("up", "down", "mid")


@dataclass(frozen=True)
class Layer:
    """One cross-attention (attn2) module."""

    block: str  # "down" | "mid" | "up"
    layer: int  # index within its block group, forward order (HRV's "layer")
    n_heads: int
    resolution: tuple[int, int]  # (h, w) of its attention maps for the configured latent size
    processor: str  # key in unet.attn_processors
    offset: int  # global index of its first head


@dataclass(frozen=True)
class Head:
    block: str
    layer: int
    head: int
    resolution: tuple[int, int]
    processor: str

    @property
    def hrv_name(self) -> str:
        return f"{self.block}, layer: {self.layer}, head: {self.head}"


class HeadIndex:
    """All cross-attention heads of one UNet at one latent size, in forward order."""

    def __init__(self, layers: list[Layer]):
        self.layers = list(layers)
        self.heads: list[Head] = [
            Head(lay.block, lay.layer, h, lay.resolution, lay.processor)
            for lay in self.layers for h in range(lay.n_heads)
        ]
        self._by_processor = {lay.processor: lay for lay in self.layers}

    def __len__(self) -> int:
        return len(self.heads)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeadIndex) and self.layers == other.layers

    def layer(self, processor: str) -> Layer:
        return self._by_processor[processor]

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        """Distinct map resolutions, largest first."""
        return sorted({lay.resolution for lay in self.layers}, key=lambda r: -r[0] * r[1])

    def heads_at(self, resolution: tuple[int, int]) -> np.ndarray:
        """Global indices of the heads whose maps have this resolution, in global order."""
        return np.array([i for i, h in enumerate(self.heads) if h.resolution == resolution], dtype=np.int64)

    # --- selections -------------------------------------------------------------------------------------
    def mask(self, blocks: list[str] | None = None, resolutions: list[int] | None = None) -> np.ndarray:
        """Boolean (H,) selecting heads in the given blocks and map sizes (square side, e.g. 32); None = all."""
        for b in blocks or []:
            if b not in BLOCKS:
                raise ValueError(f"unknown block {b!r}: use any of {list(BLOCKS)}")
        sides = {h.resolution[0] for h in self.heads}
        for r in resolutions or []:
            if r not in sides:
                raise ValueError(f"no heads at resolution {r}: this model has map sizes {sorted(sides)}")
        return np.array([(blocks is None or h.block in blocks)
                         and (resolutions is None or h.resolution[0] in resolutions) for h in self.heads])

    def daam_mask(self, latent_hw: int) -> np.ndarray:
        """Heads daam 0.2.0 aggregates by default: up and down blocks, no mid, and no map whose
        integer factor sqrt(latent_hw // (h*w)) is 8 (its 8x8 maps on a 64x64 latent grid)."""
        return np.array([h.block != "mid" and int((latent_hw // (h.resolution[0] * h.resolution[1])) ** 0.5) != 8
                         for h in self.heads])

    # --- converters ---------------------------------------------------------------------------------------
    def hrv_names(self) -> list[str]:
        return [h.hrv_name for h in self.heads]

    def from_hrv_names(self, names: list[str]) -> np.ndarray:
        """Permutation p with p[j] = our index of the j-th named head; errors name the mismatch."""
        pos = {n: i for i, n in enumerate(self.hrv_names())}
        missing = [n for n in names if n not in pos]
        if missing or len(names) != len(self.heads) or len(set(names)) != len(names):
            raise ValueError(f"head names do not match this model's {len(self.heads)} heads "
                             f"(got {len(names)} names, {len(missing)} unknown, e.g. {missing[:3]})")
        return np.array([pos[n] for n in names], dtype=np.int64)

    def daam_order(self) -> np.ndarray:
        """Our indices in daam's layer order (up blocks, then down, then mid; heads in order)."""
        return np.array([i for b in DAAM_BLOCK_ORDER for i, h in enumerate(self.heads) if h.block == b],
                        dtype=np.int64)

    # --- (de)serialisation ---------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps([asdict(lay) for lay in self.layers])

    @classmethod
    def from_json(cls, text: str) -> "HeadIndex":
        return cls([Layer(**{**d, "resolution": tuple(d["resolution"])}) for d in json.loads(text)])

    @classmethod
    def from_unet(cls, unet: torch.nn.Module, latent_size: tuple[int, int]) -> "HeadIndex":
        """Enumerate attn2 modules of a diffusers UNet2DConditionModel in forward order.

        Resolutions follow the UNet's layout: down block i works at latent / 2**i (each but the last
        downsamples), the mid block at the deepest size, up block j at the size of down block n-1-j.
        The capture checks every map against this and fails loudly on a mismatch.
        """
        n_down = len(unet.down_blocks)
        layers: list[Layer] = []
        groups = [("down", f"down_blocks.{i}", blk, i) for i, blk in enumerate(unet.down_blocks)]
        if unet.mid_block is not None:
            groups.append(("mid", "mid_block", unet.mid_block, n_down - 1))
        groups += [("up", f"up_blocks.{j}", blk, len(unet.up_blocks) - 1 - j) for j, blk in enumerate(unet.up_blocks)]
        counters = dict.fromkeys(BLOCKS, 0)
        offset = 0
        for block, prefix, module, depth in groups:
            resolution = (latent_size[0] // 2 ** depth, latent_size[1] // 2 ** depth)
            for a, transformer in enumerate(getattr(module, "attentions", None) or []):
                for t, tblock in enumerate(getattr(transformer, "transformer_blocks", [])):
                    attn2 = getattr(tblock, "attn2", None)
                    if attn2 is None or not attn2.is_cross_attention:
                        continue
                    key = f"{prefix}.attentions.{a}.transformer_blocks.{t}.attn2.processor"
                    layers.append(Layer(block, counters[block], attn2.heads, resolution, key, offset))
                    counters[block] += 1
                    offset += attn2.heads
        if not layers:
            raise ValueError("this UNet has no cross-attention (attn2) layers to capture")
        return cls(layers)

