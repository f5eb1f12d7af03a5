"""Why a relevance source does or does not pick localizing heads: relevance vs each head's own held-out IoU.

For every scored (sample, word) pair the single-head IoU of every head is computed (`head_ious`: the head's own
upsampled map, DAAM's binarisation, against the reference mask). A relevance source is scored through its parts
(`Relevance.parts`: the oracle's held-out folds, the random control's draws, one part otherwise), so each pair is
compared with a relevance that was chosen without it. Per (part, word), over the heads of a group (all heads,
one block, one resolution): Spearman rho between the word's relevance and the heads' mean single-head IoU over
the part's pairs of that word. The group's rho is the mean over (part, word) weighted by pairs; its 95% interval
is the bias-corrected percentile bootstrap resampling prompts (a prompt's pairs move together). Also reported: the mean
single-head IoU of the source's top 25% heads beside that of all heads.

Written against HeadIndex and the stored maps only, so it runs in the SDXL setting as in the shapes world. An
`Analysis` (config `analyses:`); besides the run's own source it scores the model-free `extra` sources (by default
the held-out oracle and random heads, the ceiling and the floor). Writes head_diagnostics.{csv,md,png}.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from bench.aggregate import ranked_heads, resolve_k
from bench.analyses import Analysis
from bench.cache import write_atomic
from bench.heads import HeadIndex
from bench.prompts import PromptRow
from bench.relevance import OracleRelevance, RandomRelevance, Relevance, RelevancePart, head_ious
from bench.report import degenerate
from bench.samples import Sample
from bench.store import GenerateStore, MaskStore

# the bars' relevance sources and the scatters' blocks never share a colour (blocks also differ by marker)
SOURCE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:brown")
BLOCK_STYLE = {"down": ("black", "v"), "mid": ("tab:purple", "s"), "up": ("tab:olive", "^")}


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of x (n,) with each row of y (B, n), average ranks for ties; NaN where either is constant."""
    rx = rankdata(x)
    ry = rankdata(y, axis=-1)  # (B, n)
    rx, ry = rx - rx.mean(), ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((rx**2).sum() * (ry**2).sum(-1))  # (B,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ry @ rx) / np.where(den > 0, den, 1), np.nan)


def bias_corrected_interval(estimate: float, boot: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Bias-corrected percentile bootstrap interval (Efron's BC): the percentiles shift by how far the resamples'
    median lies from the estimate (resampling prompts with repeats makes per-word mean IoUs noisier, which pulls
    rho towards 0). NaN when no resample is finite."""
    boot = boot[np.isfinite(boot)]
    if not len(boot) or not np.isfinite(estimate):
        return np.nan, np.nan
    below = ((boot < estimate).sum() + 0.5 * (boot == estimate).sum()) / len(boot)
    z0 = norm.ppf(np.clip(below, 1 / (len(boot) + 1), len(boot) / (len(boot) + 1)))
    z = norm.ppf(0.5 + level / 2)
    lo, hi = np.quantile(boot, norm.cdf([2 * z0 - z, 2 * z0 + z]))
    return float(lo), float(hi)


@dataclass
class PartPairs:
    """One part of a source: its relevance per word (W, H) and, per word, the pairs it is compared on."""

    index: int
    relevance: np.ndarray  # (W, H) in HeadIndex order
    pair_rows: list[np.ndarray]  # per word: rows into the pair table


def source_rho(parts: list[PartPairs], ious: np.ndarray, pair_prompt: np.ndarray, heads: np.ndarray,
               weights: np.ndarray) -> np.ndarray:
    """Weighted mean over (part, word) of Spearman(relevance, mean single-head IoU) over `heads`.

    ious (P, H): single-head IoU per pair; pair_prompt (P,): prompt number of each pair; weights (B, n_prompts):
    how often each prompt is drawn in each resample (row of ones = the sample itself). Returns rho (B,).
    """
    total = np.zeros(len(weights))
    mass = np.zeros(len(weights))
    for part in parts:
        for w, rows in enumerate(part.pair_rows):
            if not len(rows):
                continue
            pair_w = weights[:, pair_prompt[rows]]  # (B, p)
            n = pair_w.sum(1)  # (B,)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_iou = (pair_w @ ious[np.ix_(rows, heads)]) / n[:, None]  # (B, h)
            rho = spearman_rows(part.relevance[w, heads], mean_iou)  # (B,)
            ok = np.isfinite(rho) & (n > 0)
            total += np.where(ok, rho * n, 0.0)
            mass += np.where(ok, n, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / mass


def head_groups(head_index: HeadIndex) -> dict[str, np.ndarray]:
    """{"all", "block down", ..., "res 16x16", ...}: head positions of each group with at least two heads."""
    heads = head_index.heads
    groups = {"all": np.arange(len(heads))}
    for block in dict.fromkeys(h.block for h in heads):
        groups[f"block {block}"] = np.flatnonzero([h.block == block for h in heads])
    for res in head_index.resolutions:
        groups[f"res {res[0]}x{res[1]}"] = head_index.heads_at(res)
    return {name: idx for name, idx in groups.items() if len(idx) >= 2}


class HeadDiagnostics(Analysis):
    """Spearman rho (bootstrap CI over prompts) between head relevance and single-head held-out IoU, overall,
    per block and per resolution, for the run's relevance source and the `extra` model-free ones."""

    name = "head_diagnostics"

    def __init__(self, extra: list[str] = ("oracle", "random"), n_boot: int = 1000, top_k: str = "25%",
                 folds: int = 3, draws: int = 5, seed: int = 0):
        unknown = sorted(set(extra) - {"oracle", "random"})
        if unknown:
            raise ValueError(f"head_diagnostics.extra takes oracle and random (model-free sources), got {unknown}")
        self.extra, self.n_boot, self.top_k, self.seed = list(extra), n_boot, top_k, seed
        self.folds, self.draws = folds, draws

    def check(self, relevance: Relevance | None, rows: list[PromptRow]) -> None:
        """Needs scored prompts with words; at least two prompts when the oracle is scored (held-out folds)."""
        if not rows or not any(r.words for r in rows):
            raise ValueError("head diagnostics need prompts with target words")
        if "oracle" in self.extra and len({r.id for r in rows}) < self.folds:
            raise ValueError(f"head diagnostics' oracle needs >= {self.folds} prompts: "
                             "set analyses.head_diagnostics.extra=[random] or use more prompts")

    def sources(self, relevance: Relevance | None) -> list[Relevance]:
        """The run's source, then each extra source not already that one."""
        extra = {"oracle": lambda: OracleRelevance(folds=self.folds, seed=self.seed),
                 "random": lambda: RandomRelevance(seed=self.seed, draws=self.draws)}
        own = [relevance] if relevance is not None else []
        return own + [extra[name]() for name in self.extra if not any(s.name == name for s in own)]

    def __call__(self, samples: list[Sample], gen_store: GenerateStore, mask_store: MaskStore,
                 relevance: Relevance | None, tau: float | list[float], run_dir: Path) -> str:
        tau = float(tau if isinstance(tau, (int, float)) else tau[0])  # a tau sweep: its first value
        head_index = gen_store.head_index()
        pairs, ious = head_ious(samples, gen_store, mask_store, [tau])
        ious = ious[:, 0]  # (P, H)
        pair_index = {(s.id, w): p for p, (s, w) in enumerate(pairs)}
        prompts = sorted({s.row.id for s, _ in pairs})
        pair_prompt = np.array([prompts.index(s.row.id) for s, _ in pairs])  # (P,)
        rng = np.random.default_rng(self.seed)
        weights = np.vstack([np.ones(len(prompts)),  # row 0: the sample itself, then the resamples
                             rng.multinomial(len(prompts), np.full(len(prompts), 1 / len(prompts)), self.n_boot)])
        groups = head_groups(head_index)
        words = sorted({w for _, w in pairs})
        rows, scatter = [], {}
        for source in self.sources(relevance):
            parts = [self._part(part, words, pair_index, head_index)
                     for part in self._parts(source, samples, gen_store, mask_store, tau)]
            label = source.label()
            for group, heads in groups.items():
                rho = source_rho(parts, ious, pair_prompt, heads, weights)
                lo, hi = bias_corrected_interval(rho[0], rho[1:])
                top, everyone = self._top_iou(parts, ious, heads)
                rows.append({"source": label, "group": group, "rho": rho[0], "ci95_lo": lo, "ci95_hi": hi,
                             "ci95_flag": degenerate(rho[0], lo, hi),
                             f"iou_top{self.top_k}": top, "iou_all_heads": everyone, "n_heads": len(heads),
                             "n_pairs": len(np.unique(np.concatenate([r for p in parts for r in p.pair_rows]))),
                             "n_parts": len(parts),
                             "n_prompts": len(prompts)})
            scatter[label] = self._scatter(parts, ious)
        table = pd.DataFrame(rows)
        table.to_csv(run_dir / "head_diagnostics.csv", index=False)
        header = ["# Head diagnostics: does relevance rank heads by how well each one alone localizes the word?", "",
                  f"- rho: Spearman between a word's head relevance and each head's mean single-head IoU (tau {tau}) "
                  "over held-out pairs of that word (oracle: its held-out folds), mean over (part, word) weighted by "
                  f"pairs; 95% bias-corrected percentile bootstrap over {len(prompts)} prompts "
                  f"({self.n_boot} resamples)",
                  f"- iou_top{self.top_k}: mean single-head IoU of the source's top {self.top_k} heads; "
                  "iou_all_heads: of all heads in the group; n_pairs: distinct (sample, word) pairs; n_parts: the "
                  "source's folds or draws; the CI resamples prompts only (random: its fixed draws, so a draw's chance "
                  "correlation with IoU is not averaged away); ci95_flag names a degenerate interval (zero width, or "
                  "one that excludes its rho): no usable CI",
                  *(f"- {s.label()}: {s.describe()}" for s in self.sources(relevance))]
        md = "\n".join(header) + "\n\n" + table.to_markdown(index=False, floatfmt=".3f") + "\n"
        (run_dir / "head_diagnostics.md").write_text(md)
        self._plot(table, scatter, head_index, run_dir / "head_diagnostics.png")
        return md

    @staticmethod
    def _parts(source: Relevance, samples: list, gen_store: GenerateStore, mask_store: MaskStore,
               tau: float) -> list[RelevancePart]:
        """The source's parts; an oracle the run already fitted is reused, not refitted."""
        if isinstance(source, OracleRelevance) and source.folds:
            return [RelevancePart("fold", f.index, f.relevance, f.held_out, [f.tau]) for f in source.folds]
        return source.parts(samples, gen_store, mask_store, [tau])

    @staticmethod
    def _part(part: RelevancePart, words: list[str], pair_index: dict, head_index: HeadIndex) -> PartPairs:
        ids = [s.id for s in part.samples]
        relevance = np.stack([np.asarray(part.relevance.vector(w, head_index), dtype=np.float64) for w in words])
        pair_rows = [np.array([pair_index[(i, w)] for i in ids if (i, w) in pair_index], dtype=np.int64)
                     for w in words]
        return PartPairs(part.index, relevance, pair_rows)

    def _top_iou(self, parts: list[PartPairs], ious: np.ndarray, heads: np.ndarray) -> tuple[float, float]:
        """Mean single-head IoU of each (part, word)'s top-k heads within `heads`, and of all of them."""
        top, everyone = [], []
        for part in parts:
            for w, rows in enumerate(part.pair_rows):
                if len(rows):
                    order = heads[ranked_heads(part.relevance[w, heads])]
                    chosen = order[: resolve_k(self.top_k, len(order))]
                    top.append(ious[np.ix_(rows, chosen)].mean(1))
                    everyone.append(ious[np.ix_(rows, heads)].mean(1))
        return float(np.concatenate(top).mean()), float(np.concatenate(everyone).mean())

    @staticmethod
    def _scatter(parts: list[PartPairs], ious: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per head: mean relevance percentile (within its word) and mean single-head IoU, over (part, word)."""
        pct, iou = [], []
        for part in parts:
            for w, rows in enumerate(part.pair_rows):
                if len(rows):
                    pct.append(rankdata(part.relevance[w]) / part.relevance.shape[1])
                    iou.append(ious[rows].mean(0))
        return np.mean(pct, 0), np.mean(iou, 0)

    @staticmethod
    def _plot(table: pd.DataFrame, scatter: dict, head_index: HeadIndex, path: Path) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        groups = list(dict.fromkeys(table["group"]))
        sources = list(scatter)
        fig, axes = plt.subplots(1, 1 + len(sources), figsize=(5 + 3.2 * len(sources), 3.6), squeeze=False)
        ax = axes[0, 0]
        width = 0.8 / len(sources)
        for i, source in enumerate(sources):
            rows = table[table["source"] == source].set_index("group").loc[groups]
            x = np.arange(len(groups)) + (i - (len(sources) - 1) / 2) * width
            err = np.clip(np.vstack([rows["rho"] - rows["ci95_lo"], rows["ci95_hi"] - rows["rho"]]), 0, None)
            ax.bar(x, rows["rho"], width, yerr=np.nan_to_num(err), capsize=2, label=source,
                   color=SOURCE_COLOURS[i % len(SOURCE_COLOURS)])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(groups)), groups, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("Spearman rho (relevance, single-head IoU)")
        ax.legend(fontsize=6)
        blocks = np.array([h.block for h in head_index.heads])
        for ax, source in zip(axes[0, 1:], sources):
            pct, iou = scatter[source]
            for block in dict.fromkeys(blocks):
                keep = blocks == block
                colour, marker = BLOCK_STYLE[block]
                ax.scatter(pct[keep], iou[keep], s=10, c=colour, marker=marker, label=f"{block} block")
            ax.set_title(source, fontsize=8)
            ax.set_xlabel("relevance percentile (mean over words)")
            ax.set_ylabel("single-head IoU (held out)")
            ax.legend(fontsize=6)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        write_atomic(path, buf.getvalue())
