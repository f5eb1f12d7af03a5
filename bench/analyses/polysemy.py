"""Experiment 3, misinterpretation diagnosis: the same word's map through the top-k heads of each candidate
concept, which concept's heads localize it best."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.aggregate import mean_of_heads, ranked_heads, resolve_k, word_head_maps
from bench.analyses import Analysis
from bench.cache import write_atomic
from bench.checks import parse_k
from bench.prompts import PromptRow
from bench.relevance import ConceptRelevance, Relevance
from bench.samples import EOT, Sample
from bench.score import heat_to_mask, iou, normalised_heat
from bench.store import GenerateStore, MaskStore


class PolysemyDiagnosis(Analysis):
    """The same word's map through the top-k heads of each candidate concept (prompt row field `concepts`).

    One table row per (sample, word, concept): `mass` = mean over those heads and the map of the word's
    attention (summed over steps, before any normalisation), `iou` against the pseudo ground truth when
    the pair has one; per (sample, word) the `interpretation` is the concept with the best IoU (the
    largest mass when there is no mask). Writes polysemy.csv, polysemy.md and polysemy.png (rows:
    samples; columns: image, DAAM map, one map per concept) into the run directory.
    """

    name = "polysemy"

    def __init__(self, k: int | float | str = "10%", max_figure_rows: int = 12):
        parse_k(k)
        self.k, self.max_figure_rows = k, max_figure_rows

    def check(self, relevance: Relevance | None, rows: list[PromptRow]) -> None:
        """One clear error before generation: concept vectors needed, every row names known concepts."""
        if not isinstance(relevance, ConceptRelevance):
            raise ValueError("the polysemy diagnosis needs per-concept vectors: use relevance=hrv or hrv_file")
        bad = [r.id for r in rows if not r.extra.get("concepts")
               or any(c not in relevance.concepts for c in r.extra["concepts"])]
        if bad:
            raise ValueError(f"polysemy rows need a `concepts` list of known concepts ({relevance.concepts}): {bad}")

    def __call__(self, samples: list[Sample], gen_store: GenerateStore, mask_store: MaskStore,
                 relevance: ConceptRelevance, tau: float | list[float], run_dir: Path) -> str:
        tau = float(tau if isinstance(tau, (int, float)) else tau[0])  # a tau sweep: its first value
        geometry, head_index = gen_store.geometry(), gen_store.head_index()
        daam = head_index.daam_mask(geometry.daam_latent_hw)
        heads = {}
        for c in sorted({c for s in samples for c in s.row.extra["concepts"]}):
            order = ranked_heads(relevance.concept_vector(c, head_index))
            heads[c] = np.sort(order[: resolve_k(self.k, len(order))])
        rows, figure = [], []
        for sample in samples:
            stored, masks = gen_store.sample(sample.id), mask_store.masks(sample.id)
            for word, slots in ((w, s) for w, s in stored["words"].items() if w != EOT):
                maps = word_head_maps(stored["maps"], head_index, slots, geometry.heatmap_size)  # (H, s, s)
                ref = masks[word].mask
                per_concept = {}
                for c in sample.row.extra["concepts"]:
                    heat = mean_of_heads(maps, heads[c])
                    score = float("nan")
                    if ref is not None:
                        score = float(iou(heat_to_mask(heat, ref.shape, tau), torch.from_numpy(ref)))
                    per_concept[c] = heat
                    rows.append({"sample_id": sample.id, "prompt_id": sample.row.id, "seed": sample.seed,
                                 "word": word, "concept": c, "intended": sample.row.extra.get("intended"),
                                 "n_heads": len(heads[c]), "mass": float(heat.mean()), "iou": score,
                                 "excluded": masks[word].reason})
                figure.append((sample, word, mean_of_heads(maps, daam), per_concept))
        table = pd.DataFrame(rows)
        table["interpreted_by"] = np.where(table["iou"].notna(), "iou", "mass")  # the same for a pair's rows
        value = table["iou"].where(table["iou"].notna(), table["mass"])
        best = table.loc[value.groupby([table["sample_id"], table["word"]]).idxmax(), ["sample_id", "word", "concept"]]
        table = table.merge(best.rename(columns={"concept": "interpretation"}), on=["sample_id", "word"])
        table.to_csv(run_dir / "polysemy.csv", index=False)
        pairs = table.drop_duplicates(["sample_id", "word"])
        decided = pairs[pairs["intended"].notna()]
        agree = decided["interpretation"] == decided["intended"]
        summary = (table.assign(chosen=table["concept"] == table["interpretation"])
                   .groupby(["prompt_id", "word", "concept"], sort=False, dropna=False)
                   .agg(intended=("intended", "first"), n_seeds=("seed", "nunique"), mass=("mass", "mean"),
                        iou=("iou", "mean"), share_interpreted=("chosen", "mean")).reset_index())
        header = [f"# Misinterpretation diagnosis: each word's map through the top {self.k} heads of each concept",
                  "", f"- relevance: {relevance.describe()}",
                  "- interpretation = per (sample, word) the concept with the highest IoU against the pseudo "
                  "ground truth, or the highest mass where the pair has no mask "
                  f"({int((table['interpreted_by'] == 'iou').sum() / max(len(table), 1) * 100)}% of rows by IoU)",
                  f"- n: {table['sample_id'].nunique()} samples, {len(summary)} (prompt, concept) rows; tau = {tau}",
                  f"- interpretation = intended concept in {int(agree.sum())} of {len(agree)} (sample, word) pairs "
                  "whose prompt decides the sense"]
        md = "\n".join(header) + "\n\n" + summary.to_markdown(index=False, floatfmt=".4f") + "\n"
        (run_dir / "polysemy.md").write_text(md)
        self._plot(figure[: self.max_figure_rows], gen_store, run_dir / "polysemy.png")
        return md

    def _plot(self, items: list, gen_store: GenerateStore, path: Path) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n_cols = 2 + max(len(pc) for *_, pc in items)
        fig, axes = plt.subplots(len(items), n_cols, figsize=(2.2 * n_cols, 2.3 * len(items)), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for r, (sample, word, daam_heat, per_concept) in enumerate(items):
            image = np.array(gen_store.image(sample.id))
            axes[r, 0].imshow(image)
            axes[r, 0].set_title(f"{sample.row.prompt[:28]}\nseed {sample.seed}", fontsize=7)
            for c, (title, heat) in enumerate([("DAAM", daam_heat), *per_concept.items()], start=1):
                axes[r, c].imshow(image)
                axes[r, c].imshow(normalised_heat(heat, image.shape[:2]).numpy(), cmap="jet", alpha=0.5)
                axes[r, c].set_title(f"{word!r}: {title}\nmass {float(heat.mean()):.3g}", fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        write_atomic(path, buf.getvalue())
