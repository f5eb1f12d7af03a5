"""Small images for the segmenter tests (the tiny models live in bench.grounded_sam_tiny)."""

from __future__ import annotations

import numpy as np
import PIL.Image

# the words the segmenter tests use; the tiny detector's vocabulary
WORDS = ["cat", "cats", "dog", "teddy", "bear", "red", "square", "tree", "sky"]


def small_images() -> list[PIL.Image.Image]:
    """Three small RGB images of different sizes (one of them blank)."""
    rng = np.random.default_rng(0)
    a = np.zeros((40, 56, 3), np.uint8)
    a[10:30, 12:40] = (220, 30, 30)
    b = rng.integers(0, 255, (48, 32, 3), dtype=np.uint8)
    c = np.full((36, 36, 3), 255, np.uint8)
    return [PIL.Image.fromarray(x) for x in (a, b, c)]
