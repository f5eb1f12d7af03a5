"""Shapes world, generated mode: how often the model drew the caption (`bench.shapes.pseudo_gt.fidelity`), and
the colour segmenter's agreement with exact masks on renders (the validity check of its pseudo ground truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import torch

from bench.analyses import Analysis
from bench.prompts import PromptRow
from bench.relevance import Relevance
from bench.samples import Sample
from bench.score import iou
from bench.shapes.pseudo_gt import ColourSegmenter, fidelity
from bench.shapes.world import WORLD, World, caption, caption_words, load_world, render, split_scene
from bench.store import GenerateStore, MaskStore


class FidelityReport(Analysis):
    """Generated mode: how often the image drew the caption, and the colour segmenter's agreement with exact
    masks on renders (its validity check), in the world of `model` (a shapes model folder). Writes fidelity.csv and
    fidelity.md."""

    name = "fidelity"

    def __init__(self, model: str, n_renders: int = 200):
        self.world = load_world(model)
        self.n_renders = n_renders

    def check(self, relevance: Relevance | None, rows: list[PromptRow]) -> None:
        """Every row must be a shapes-world caption (its words are vocabulary words)."""
        bad = [r.id for r in rows if not caption_words(r.prompt)]
        if bad:
            raise ValueError(f"fidelity needs shapes-world captions; rows {bad[:3]} have none")

    def __call__(self, samples: list[Sample], gen_store: GenerateStore, mask_store: MaskStore,
                 relevance: Relevance | None, tau: float | list[float], run_dir: Path) -> str:
        rows = []
        for sample in samples:
            image = gen_store.image(sample.id)
            result = fidelity(image, sample.row.prompt, self.world)
            rows.append({"sample_id": sample.id, "prompt": sample.row.prompt, "faithful": result["faithful"],
                         "colours_ok": all(o["area_ok"] for o in result["objects"]),
                         "front_shape_ok": result["objects"][-1]["shape_ok"]})
        table = pd.DataFrame(rows)
        table.to_csv(run_dir / "fidelity.csv", index=False)
        agreement = colour_segmenter_agreement(self.n_renders, self.world)
        text = (f"generated-mode fidelity: {table['faithful'].mean():.3f} of {len(table)} images "
                f"(colours present with plausible area {table['colours_ok'].mean():.3f}, "
                f"front object's shape right {table['front_shape_ok'].mean():.3f}); colour segmenter vs exact "
                f"masks on {self.n_renders} eval renders: mean IoU {agreement:.4f}")
        (run_dir / "fidelity.md").write_text(text + "\n")
        return text


def colour_segmenter_agreement(n_renders: int, world: World = WORLD) -> float:
    """Mean IoU of the colour segmenter's word masks against the exact masks of eval-split renders."""
    ious = []
    for i in range(n_renders):
        scene = split_scene("eval", i, world)
        image, masks = render(scene, world.size)
        text, words = caption(scene)
        pseudo = ColourSegmenter().segment([PIL.Image.fromarray(image)], [words], [{"prompt": text}])[0]
        for word in words:
            pred, ref = pseudo[word].mask, masks[word]
            both_empty_or_missing = pred is None or not (pred.any() or ref.any())  # counted as 0
            ious.append(0.0 if both_empty_or_missing else float(iou(torch.from_numpy(pred), torch.from_numpy(ref))))
    return float(np.mean(ious))
