"""Pseudo ground truth and fidelity for generated shapes-world images.

`ColourSegmenter` gives each word the pixels of its object's prompted colour (a shape word takes the
colour word before it). `fidelity` checks that a generated image drew what the caption asked for:
every prompted colour present with a plausible area, and the front object (the caption's last, drawn
last in training renders) of the right shape by `classify_shape`; objects behind it may be occluded,
so their shape check is reported but not required (on renders it fails for about one in five).
"""

from __future__ import annotations

import numpy as np
import PIL.Image

from bench.segment import Segmenter, WordMask
from bench.shapes.world import PALETTE, WORLD, World, caption_words, classify_shape, colour_mask


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


def fidelity(image: PIL.Image.Image, prompt: str, world: World = WORLD) -> dict:
    """Did the image draw the caption? Colours present with plausible areas (World.area_range), front object's
    shape right."""
    pixels = np.asarray(image.convert("RGB"))
    min_area, max_area = world.area_range()
    words = caption_words(prompt)
    checks = []
    for colour, shape in zip(words[0::2], words[1::2]):
        mask = colour_mask(pixels, colour)
        area = mask.mean()
        checks.append({"colour": colour, "shape": shape, "area": float(area),
                       "area_ok": bool(min_area <= area <= max_area),
                       "shape_ok": classify_shape(mask, world.shapes) == shape})
    faithful = all(c["area_ok"] for c in checks) and checks[-1]["shape_ok"]
    return {"objects": checks, "faithful": faithful}
