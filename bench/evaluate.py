"""Aggregate + score: stored head maps and masks -> one long IoU table.

One row per (sample, word, method, variant). Pairs without a reference mask are rows too, with
`iou` NaN and `excluded` set to the reason, so summaries count them instead of dropping them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import PIL.Image
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bench.aggregate import mean_of_heads, ranked_heads, resolve_k, top_k_chunks, top_k_curve, word_head_maps
from bench.checks import check_selective, check_taus, check_workers
from bench.heads import HeadIndex
from bench.relevance import Relevance
from bench.report import COLUMNS, reference_tau
from bench.samples import EOT
from bench.score import heat_to_mask, iou, ious_over_taus, minmax_, normalised_heat
from bench.store import GenerateStore, MaskStore


@dataclass
class Context:
    head_index: HeadIndex
    daam_latent_hw: int
    relevance: Relevance | None
    heatmap_size: int = 64
    #: this sample's per-head maps of every stored token group and its reference masks (set per sample)
    word_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    masks: dict[str, torch.Tensor | None] = field(default_factory=dict)


class Method(ABC):
    name: str
    #: True when the method ranks heads by the run's relevance source (scored once per random draw)
    uses_run_relevance: bool = False

    @abstractmethod
    def heat_maps(self, head_maps: torch.Tensor, word: str, ctx: Context) -> dict[str, tuple[int, torch.Tensor]]:
        """head_maps (H, s, s) -> {variant: (number of heads used, heat map (s, s))}."""

    def ious(self, head_maps: torch.Tensor, word: str, ctx: Context, ref: torch.Tensor | None,
             taus: list[float]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Variants, heads used (V,) and IoU (n_taus, V): DAAM's protocol at the reference mask's size
        (bicubic resize, min-max, > tau); all NaN when there is no reference (the pair is excluded)."""
        maps = self.heat_maps(head_maps, word, ctx)
        out = np.full((len(taus), len(maps)), np.nan)
        if ref is not None:
            heats = torch.stack([heat for _, heat in maps.values()])  # (V, s, s); NaN = no map for this pair
            out[:] = ious_over_taus(normalised_heat(heats, tuple(ref.shape)), ref, taus)  # heats (V, s, s)
            out[:, heats.flatten(1).isnan().any(1).numpy()] = np.nan
        return list(maps), np.array([n for n, _ in maps.values()]), out


class Daam(Method):
    """daam 0.2.0: mean over its default heads (up + down blocks, no mid, no 8x8 maps)."""

    name = "daam"

    def heat_maps(self, head_maps, word, ctx):
        selected = ctx.head_index.daam_mask(ctx.daam_latent_hw)
        return {"all": (int(selected.sum()), mean_of_heads(head_maps, selected))}


class Selective(Method):
    """Mean of the k most (order=top) or least (order=bottom) relevant heads, for each k in `k`.

    `relevance` (optional) replaces the run's source for this method, e.g. a random one as a control.
    """

    def __init__(self, k: list | int | float | str, order: str = "top", blocks: list[str] | str | None = None,
                 resolutions: list[int] | int | None = None, relevance: Relevance | None = None,
                 name: str | None = None):
        """k: counts, fractions or percentages ("25%", "all"), one or a list; blocks: down / mid / up, one or a
        list, None or "all" for every block; resolutions: map sides (32), one or a list, None for all."""
        self.k, self.blocks, self.resolutions = check_selective(k, order, blocks, resolutions)
        self.order = order
        self.relevance = relevance
        self.name = name or ("selective" if order == "top" else "bottom_k")

    @property
    def uses_run_relevance(self) -> bool:
        return self.relevance is None

    def check(self, head_index: HeadIndex) -> None:
        """One line before anything is generated when the head group or a k does not fit this model."""
        allowed = int(head_index.mask(self.blocks, self.resolutions).sum())
        if not allowed:
            raise ValueError(f"{self.name}: no heads in blocks {self.blocks} at resolutions {self.resolutions}")
        for k in self.k:
            resolve_k(k, allowed)

    def ranking(self, word: str, ctx: Context) -> np.ndarray:
        """The allowed heads (blocks, resolutions), most (top) or least (bottom) relevant first."""
        relevance = self.relevance or ctx.relevance
        if relevance is None:
            raise ValueError(f"{self.name} needs a relevance source (relevance=...)")
        allowed = ctx.head_index.mask(self.blocks, self.resolutions)
        return ranked_heads(relevance.vector(word, ctx.head_index), allowed, descending=self.order == "top")

    def heat_maps(self, head_maps, word, ctx):
        order = self.ranking(word, ctx)
        out = {}
        for k in self.k:
            n = resolve_k(k, len(order))
            # heads summed in HeadIndex order, so DAAM's head set gives DAAM's map bit for bit
            out[f"k={k}"] = (n, mean_of_heads(head_maps, np.sort(order[:n])))
        return out


class CentredDisc(Method):
    """Chance baseline: a centred disc of radius `radius` x image side, whatever the maps say."""

    name = "centred_disc"

    def __init__(self, radius: float = 0.25):
        self.radius = radius

    def heat_maps(self, head_maps, word, ctx):
        side = head_maps.shape[-1]
        centre = (torch.arange(side, dtype=torch.float32) + 0.5) / side - 0.5
        disc = (centre[:, None] ** 2 + centre[None, :] ** 2 <= self.radius**2).float()  # (s, s)
        return {f"r={self.radius}": (0, disc)}


class EndOfText(Method):
    """Chance baseline: DAAM's map of the end-of-text token (needs capture.eot=true)."""

    name = "end_of_text"

    def heat_maps(self, head_maps, word, ctx):
        if EOT not in ctx.word_maps:
            raise ValueError("the end_of_text baseline needs the end token's maps: set capture.eot=true")
        selected = ctx.head_index.daam_mask(ctx.daam_latent_hw)
        return {"daam heads": (int(selected.sum()), mean_of_heads(ctx.word_maps[EOT], selected))}


class OtherWord(Method):
    """Chance baseline: DAAM's map of another object's word of the same prompt (a word whose reference
    mask overlaps this word's by IoU < 0.5); NaN, i.e. excluded, when the prompt has no other object."""

    name = "other_word"

    def heat_maps(self, head_maps, word, ctx):
        selected = ctx.head_index.daam_mask(ctx.daam_latent_hw)
        mine = ctx.masks.get(word)
        for other, ref in ctx.masks.items():
            if other != word and ref is not None and mine is not None and float(iou(ref, mine)) < 0.5:
                return {"daam heads": (int(selected.sum()), mean_of_heads(ctx.word_maps[other], selected))}
        return {"daam heads": (int(selected.sum()), torch.full_like(head_maps[0], float("nan")))}


class KCurve(Selective):
    """Every k at once (k = 1, 1 + step, ..., K allowed heads): the running mean over heads ranked by
    relevance (`aggregate.top_k_chunks`: `top_k_curve` in cache-sized pieces), variants `k=<count>`.

    Masks are compared on a `size` x `size` grid, not at image size: each k's map is binarised by DAAM's
    protocol on that grid (bicubic resize, identity at the heat-map grid; min-max; > tau) against the
    reference mask area-downsampled to it (a cell is in the mask when at least half of it is covered).
    Resizing K maps per pair to 1024 px is not affordable. `size=None` compares at image size, exactly
    as `Selective` does (small images only).
    """

    def __init__(self, order: str = "top", blocks: list[str] | None = None, resolutions: list[int] | None = None,
                 size: int | None = 64, step: int = 1, relevance: Relevance | None = None, name: str | None = None):
        if step < 1 or (size is not None and size < 1):
            raise ValueError(f"kcurve needs step >= 1 and size >= 1 (or null), got step={step}, size={size}")
        super().__init__("all", order, blocks, resolutions, relevance,
                         name or ("kcurve" if order == "top" else "kcurve_bottom"))
        self.size, self.step = size, step
        self.chunk = 64 if size is not None else 8  # maps binarised at once (in the CPU cache)

    def ks(self, n: int) -> np.ndarray:
        """The k values scored out of n ranked heads (always including 1 and n)."""
        return np.unique(np.append(np.arange(1, n + 1, self.step), n))

    def heat_maps(self, head_maps, word, ctx):
        order = self.ranking(word, ctx)
        curve = top_k_curve(head_maps, order)  # (K, s, s)
        return {f"k={k}": (int(k), curve[k - 1]) for k in self.ks(len(order))}

    def ious(self, head_maps, word, ctx, ref, taus):
        order = self.ranking(word, ctx)
        ks = self.ks(len(order))
        out = np.full((len(taus), len(ks)), np.nan)
        if ref is not None:
            if self.size is not None:
                ref = F.interpolate(ref[None, None].float(), size=(self.size, self.size), mode="area")[0, 0] >= 0.5
            scored = np.isin(np.arange(1, len(order) + 1), ks)  # (K,) which k are scored
            for start, part in top_k_chunks(head_maps, order, self.chunk):  # scored while in the CPU cache
                keep = scored[start: start + len(part)]
                if not keep.any():
                    continue
                cols = np.searchsorted(ks, np.arange(start + 1, start + len(part) + 1)[keep])
                part = part if keep.all() else part[torch.from_numpy(keep)]  # (c, s, s), ours to modify
                norm = minmax_(part) if part.shape[-2:] == ref.shape else normalised_heat(part, tuple(ref.shape))
                out[:, cols] = ious_over_taus(norm, ref, taus)
        return [f"k={k}" for k in ks], ks, out


def make_context(gen_store: GenerateStore, relevance: Relevance | None) -> Context:
    """The head index and map geometry stored by the generate stage, with the relevance to rank heads by."""
    geometry = gen_store.geometry()
    return Context(gen_store.head_index(), geometry.daam_latent_hw, relevance, geometry.heatmap_size)


def load_sample(sample, gen_store: GenerateStore, mask_store: MaskStore, ctx: Context) -> tuple[Context, dict]:
    """A copy of ctx holding the sample's per-head maps of every stored token group (its words and, when
    captured, the end token) and its reference masks; plus {word: WordMask} of the words to score."""
    stored = gen_store.sample(sample.id)
    masks = mask_store.masks(sample.id)
    word_maps = {w: word_head_maps(stored["maps"], ctx.head_index, slots, ctx.heatmap_size)  # (H, s, s) each
                 for w, slots in stored["words"].items()}
    ctx = replace(ctx, word_maps=word_maps,
                  masks={w: None if m.mask is None else torch.from_numpy(m.mask) for w, m in masks.items()})
    return ctx, {w: masks[w] for w in stored["words"] if w != EOT}


class Overlays:
    """What fig_overlays draws, recorded while scoring (so a held-out oracle fold shows the heads chosen for it):
    for up to `n` samples spread over the run that have a word with a reference mask, the image (at most
    `max_side` px), that word's reference mask and every point method's heat map (k-curves left out) with its
    mask at the reference tau of the taus it was scored at (a fold's calibrated tau)."""

    def __init__(self, samples: list, n: int = 4, max_side: int = 256):
        self.candidates = [s.id for s in samples[:: max(1, len(samples) // n)]]
        self.n, self.max_side = n, max_side
        self.recorded: dict[str, dict] = {}  # sample id -> item

    def record(self, samples: list, gen_store: GenerateStore, mask_store: MaskStore, methods: list[Method],
               ctx: Context, taus: list[float]) -> None:
        """Add the maps of `methods` (ranked by ctx.relevance) for the candidates among `samples`; a label
        already recorded (the same method in another random draw) is kept from its first part."""
        tau = reference_tau(taus)
        for sample in (s for s in samples if s.id in self.candidates):
            sample_ctx, masks = load_sample(sample, gen_store, mask_store, ctx)
            word = next((w for w, m in masks.items() if m.mask is not None), None)
            if word is None:
                continue
            item = self.recorded.get(sample.id) or self._item(sample, gen_store, word, masks[word].mask)
            self.recorded[sample.id] = item
            for method in methods:
                if isinstance(method, KCurve):
                    continue
                for variant, (_, heat) in method.heat_maps(sample_ctx.word_maps[word], word, sample_ctx).items():
                    item["maps"].setdefault(f"{method.name} {variant}", {  # heat (s, s), mask (h, w) at the image size
                        "heat": heat.numpy(), "mask": heat_to_mask(heat, item["ref"].shape, tau).numpy(), "tau": tau})

    def _item(self, sample, gen_store: GenerateStore, word: str, ref: np.ndarray) -> dict:
        image = gen_store.image(sample.id)
        image.thumbnail((self.max_side, self.max_side))
        ref = PIL.Image.fromarray(ref).resize(image.size, PIL.Image.NEAREST)
        return {"sample_id": sample.id, "word": word, "title": f"{sample.row.id} s{sample.seed}: {word}",
                "image": np.asarray(image), "ref": np.asarray(ref), "maps": {}}

    def items(self) -> list[dict]:
        """The recorded items in sample order, at most n: {sample_id, word, title, image (h, w, 3), ref (h, w),
        maps: {label: {heat (s, s), mask (h, w), tau}}}."""
        return [self.recorded[i] for i in self.candidates if i in self.recorded][: self.n]


def score_sample(sample, gen_store: GenerateStore, mask_store: MaskStore, methods: list[Method], ctx: Context,
                 taus: list[float]) -> list[dict]:
    """Blocks of long-table rows of one sample: one per (word, method, tau), variants as arrays."""
    ctx, masks = load_sample(sample, gen_store, mask_store, ctx)
    blocks = []
    for word, ref in masks.items():
        ref_mask = ctx.masks[word]
        head_maps = ctx.word_maps[word]
        for method in methods:
            variants, n_heads, ious = method.ious(head_maps, word, ctx, ref_mask, taus)
            for tau, tau_ious in zip(taus, ious):
                blocks.append({"sample_id": sample.id, "prompt_id": sample.row.id, "seed": sample.seed, "tau": tau,
                               "word": word, "method": method.name, "variant": variants, "n_heads": n_heads,
                               "iou": tau_ious, "excluded": ref.reason})
    return blocks


def long_table(blocks: list[dict]) -> pd.DataFrame:
    """Rows of the long table from blocks (per-variant arrays expanded); a NaN IoU with a reference
    mask means both the prediction and the reference are empty: excluded with that reason."""
    arrays = ("variant", "n_heads", "iou")
    scalars = [c for c in COLUMNS if c not in arrays]
    meta = pd.DataFrame([{c: b[c] for c in scalars} for b in blocks], columns=scalars)
    table = meta.loc[meta.index.repeat([len(b["variant"]) for b in blocks])].reset_index(drop=True)
    for c in arrays:
        table[c] = np.concatenate([np.asarray(b[c]) for b in blocks]) if blocks else []
    table.loc[table["iou"].isna() & table["excluded"].isna(), "excluded"] = "undefined IoU (empty masks or no map)"
    return table[COLUMNS]


def evaluate_stage(samples: list, gen_store: GenerateStore, mask_store: MaskStore, methods: list[Method],
                   relevance: Relevance | None, tau: float | list[float], workers: int = 1,
                   overlays: Overlays | None = None) -> pd.DataFrame:
    """Score every (sample, word) with every method variant at every tau; returns the long table.

    `workers` threads score samples in parallel, one torch thread each (the tensor and numpy work releases
    the GIL); the table is the same, row for row, whatever the number.

    A relevance source may split the scoring (`Relevance.parts`): held-out folds of the oracle (each
    sample scored once, with the relevance and tau chosen without it; rows get a `fold` column) or draws
    of the random control (methods ranking by the run's relevance scored once per draw, rows get `draw`).
    `overlays` records fig_overlays' maps with each part's relevance and tau.
    """
    taus = check_taus(tau)
    parts = relevance.parts(samples, gen_store, mask_store, taus) if relevance is not None else []
    if all(part.split is None for part in parts):
        _record(overlays, samples, gen_store, mask_store, methods, relevance, taus)
        return _score(samples, gen_store, mask_store, methods, relevance, taus, workers)
    tables = []
    if parts[0].split == "draw":
        fixed = [m for m in methods if not m.uses_run_relevance]
        _record(overlays, samples, gen_store, mask_store, fixed, relevance, taus)
        tables.append(_score(samples, gen_store, mask_store, fixed, relevance, taus, workers))
        methods = [m for m in methods if m.uses_run_relevance]
    for part in parts:
        _record(overlays, part.samples, gen_store, mask_store, methods, part.relevance, part.taus)
        table = _score(part.samples, gen_store, mask_store, methods, part.relevance, part.taus, workers,
                       f"aggregate+score ({part.split} {part.index})")
        tables.append(table.assign(**{part.split: part.index}))
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True) if tables else long_table([])


def _record(overlays: Overlays | None, samples: list, gen_store: GenerateStore, mask_store: MaskStore,
            methods: list[Method], relevance: Relevance | None, taus: list[float]) -> None:
    if overlays is not None and methods:
        overlays.record(samples, gen_store, mask_store, methods, make_context(gen_store, relevance), taus)


def _score(samples: list, gen_store: GenerateStore, mask_store: MaskStore, methods: list[Method],
           relevance: Relevance | None, taus: list[float], workers: int, desc: str = "aggregate+score") -> pd.DataFrame:
    if not methods:
        return long_table([])
    check_workers(workers)
    ctx = make_context(gen_store, relevance)

    def score(sample) -> list[dict]:
        return score_sample(sample, gen_store, mask_store, methods, ctx, taus)

    blocks = []
    progress = tqdm(total=len(samples), desc=desc, unit="sample")
    if workers == 1:
        for sample in samples:
            blocks += score(sample)
            progress.update()
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # parallel over samples instead of inside each tensor op
        try:
            with ThreadPoolExecutor(workers) as pool:
                for sample_blocks in pool.map(score, samples):  # in sample order
                    blocks += sample_blocks
                    progress.update()
        finally:
            torch.set_num_threads(threads)
    progress.close()
    return long_table(blocks)
