"""Pseudo ground truth: segmenters turn (image, word) into a boolean mask, or an exclusion with a reason."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np
import PIL.Image
from tqdm import tqdm

from bench.store import GenerateStore, MaskStore, WordMask


class Segmenter(ABC):
    """Maps a batch of images and, per image, the words to segment, to one WordMask per word."""

    name: str = "segmenter"
    #: False for segmenters whose masks are only fixtures; the report then says its numbers check plumbing only.
    meaningful: bool = True

    def check_available(self) -> None:
        """Raise one clear line if the segmenter cannot run (called before any generation)."""

    @abstractmethod
    def segment(self, images: list[PIL.Image.Image], words: list[list[str]],
                records: list[dict] | None = None) -> list[dict[str, WordMask]]:
        """Return, for each image, {word: WordMask}; `records` are the prompt-set rows (may carry mask paths)."""


class FileMaskSegmenter(Segmenter):
    """Reads each word's mask from a PNG named in the prompt row (`masks: {word: path}`).

    As `file_masks` (meaningful=False) its masks are fixtures unrelated to what a random-weight model
    draws, and tables built on it say they only check the pipeline. As `exact_masks` it serves masks
    that are exact for the image (image mode on rendered or annotated images).
    """

    def __init__(self, name: str = "file_masks", meaningful: bool = False):
        self.name = name
        self.meaningful = meaningful

    def segment(self, images: list[PIL.Image.Image], words: list[list[str]],
                records: list[dict] | None = None) -> list[dict[str, WordMask]]:
        if records is None:
            raise ValueError("file_masks needs the prompt rows (with a `masks` field)")
        out = []
        for image, word_list, rec in zip(images, words, records):
            paths = rec.get("masks", {})
            per_word = {}
            for word in word_list:
                if word not in paths:
                    per_word[word] = WordMask(None, "no mask file")
                    continue
                try:
                    mask = np.array(PIL.Image.open(paths[word]).convert("L").resize(image.size)) > 127
                except (OSError, SyntaxError, ValueError) as err:
                    raise ValueError(f"mask file {paths[word]} (row {rec.get('id', '?')}, word {word!r}) is not a "
                                     f"readable image ({type(err).__name__}): fix or replace it") from None
                per_word[word] = WordMask(mask) if mask.any() else WordMask(None, "empty mask")
            out.append(per_word)
        return out


def segment_stage(segmenter: Segmenter, samples: list, image_store: GenerateStore, store: MaskStore,
                  batch_size: int = 8) -> dict:
    """Segment every stored image whose masks are not yet in `store` (or fail their check)."""
    todo = [s for s in samples if not store.complete(s.id)]
    seconds = 0.0  # in segmenter.segment (a lazily loaded model's loading included), not in PNG writes
    for start in tqdm(range(0, len(todo), batch_size), desc=f"segment ({segmenter.name})", disable=not todo):
        batch = todo[start: start + batch_size]
        images = [image_store.image(s.id) for s in batch]
        records = [{"id": s.row.id, "prompt": s.row.prompt, **s.row.extra} for s in batch]
        t0 = time.perf_counter()
        results = segmenter.segment(images, [list(s.row.words) for s in batch], records)
        seconds += time.perf_counter() - t0
        for sample, per_word in zip(batch, results):
            store.save_masks(sample.id, per_word)
    stats = {"segmented": len(todo), "cached": len(samples) - len(todo)}
    if todo:
        stats.update(seconds=round(seconds, 3), seconds_per_image=round(seconds / len(todo), 4))
    return stats
