"""Pseudo ground truth and fidelity for generated shapes-world images.

`ColourSegmenter` gives each word the pixels of its object's prompted colour (a shape word takes the
colour word before it). `fidelity` checks that a generated image drew what the caption asked for:
every prompted colour present with a plausible area, and the front object (the caption's last, drawn
last in training renders) of the right shape by `classify_shape`; objects behind it may be occluded,
so their shape check is reported but not required (on renders it fails for about one in five).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import PIL.Image
import torch

from bench.score import iou
from bench.segment import Segmenter, WordMask
from bench.shapes.world import (
    MAX_SIZE,
    MIN_SIZE,
    MIN_VISIBLE,
    PALETTE,
    caption,
    caption_words,
    classify_shape,
    colour_mask,
    render,
    split_scene,
)

# plausible visible area of one object, as a fraction of the image (squares of the sampled sides,
# circles/crosses/triangles smaller; occlusion keeps >= MIN_VISIBLE)
MIN_AREA = 0.5 * MIN_VISIBLE * MIN_SIZE**2 * 0.5
MAX_AREA = 1.5 * MAX_SIZE**2


class ColourSegmenter(Segmenter):
    """Word masks from colour segmentation of the image, paired by the caption."""

    name = "colour"

    def segment(self, images: list[PIL.Image.Image], words: list[list[str]],
                records: list[dict] | None = None) -> list[dict[str, WordMask]]:
        if records is None or any("prompt" not in r for r in records):
            raise ValueError("the colour segmenter needs each row's prompt (records with a `prompt` field)")
        out = []
        for image, word_list, rec in zip(images, words, records):
            pixels = np.asarray(image.convert("RGB"))
            masks = {}
            colour = None
            for word in caption_words(rec["prompt"]):
                colour = word if word in PALETTE else colour
                if word in word_list:
                    mask = colour_mask(pixels, colour)
                    masks[word] = WordMask(mask) if mask.any() else WordMask(None, "prompted colour absent")
            out.append(masks)
        return out


def fidelity(image: PIL.Image.Image, prompt: str) -> dict:
    """Did the image draw the caption? Colours present with plausible areas, front object's shape right."""
    pixels = np.asarray(image.convert("RGB"))
    words = caption_words(prompt)
    checks = []
    for colour, shape in zip(words[0::2], words[1::2]):
        mask = colour_mask(pixels, colour)
        area = mask.mean()
        checks.append({"colour": colour, "shape": shape, "area": float(area),
                       "area_ok": bool(MIN_AREA <= area <= MAX_AREA),
                       "shape_ok": classify_shape(mask) == shape})
    faithful = all(c["area_ok"] for c in checks) and checks[-1]["shape_ok"]
    return {"objects": checks, "faithful": faithful}


class FidelityReport:
    """Analysis (config `analyses:`) of generated mode: how often the image drew the caption, and the
    colour segmenter's agreement with exact masks on renders (its validity check)."""

    def __init__(self, n_renders: int = 200):
        self.n_renders = n_renders

    def check(self, relevance, rows: list) -> None:
        """Every row must be a shapes-world caption (its words are vocabulary words)."""
        bad = [r.id for r in rows if not caption_words(r.prompt)]
        if bad:
            raise ValueError(f"fidelity needs shapes-world captions; rows {bad[:3]} have none")

    def __call__(self, samples: list, gen_store, mask_store, relevance, tau, run_dir) -> str:
        rows = []
        for sample in samples:
            image = gen_store.image(sample.id)
            result = fidelity(image, sample.row.prompt)
            rows.append({"sample_id": sample.id, "prompt": sample.row.prompt, "faithful": result["faithful"],
                         "colours_ok": all(o["area_ok"] for o in result["objects"]),
                         "front_shape_ok": result["objects"][-1]["shape_ok"]})
        table = pd.DataFrame(rows)
        table.to_csv(run_dir / "fidelity.csv", index=False)
        agreement = colour_segmenter_agreement(self.n_renders)
        text = (f"generated-mode fidelity: {table['faithful'].mean():.3f} of {len(table)} images "
                f"(colours present with plausible area {table['colours_ok'].mean():.3f}, "
                f"front object's shape right {table['front_shape_ok'].mean():.3f}); colour segmenter vs exact "
                f"masks on {self.n_renders} eval renders: mean IoU {agreement:.4f}")
        (run_dir / "fidelity.md").write_text(text + "\n")
        return text


def colour_segmenter_agreement(n_renders: int) -> float:
    """Mean IoU of the colour segmenter's word masks against the exact masks of eval-split renders."""
    ious = []
    for i in range(n_renders):
        image, masks = render(split_scene("eval", i))
        text, words = caption(split_scene("eval", i))
        pseudo = ColourSegmenter().segment([PIL.Image.fromarray(image)], [words], [{"prompt": text}])[0]
        for word in words:
            pred, ref = pseudo[word].mask, masks[word]
            both_empty_or_missing = pred is None or not (pred.any() or ref.any())  # counted as 0
            ious.append(0.0 if both_empty_or_missing else float(iou(torch.from_numpy(pred), torch.from_numpy(ref))))
    return float(np.mean(ious))
