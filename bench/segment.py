"""Pseudo ground truth: segmenters turn (image, word) into a boolean mask, or an exclusion with a reason."""

from __future__ import annotations

import io
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
from tqdm import tqdm

from bench.cache import StageStore, write_atomic


@dataclass
class WordMask:
    """One word's mask at image resolution, or why there is none (the pair is then excluded and counted)."""

    mask: np.ndarray | None  # bool (H, W); None when excluded
    reason: str | None = None  # exclusion reason, e.g. "no detection"; None when mask is set
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (n, 4) xyxy pixels
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))  # (n,)

    def __post_init__(self) -> None:
        if (self.mask is None) == (self.reason is None):
            raise ValueError("WordMask needs exactly one of mask or reason")


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
                mask = np.array(PIL.Image.open(paths[word]).convert("L").resize(image.size)) > 127
                per_word[word] = WordMask(mask) if mask.any() else WordMask(None, "empty mask")
            out.append(per_word)
        return out


def _slug(word: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in word)


def segment_stage(segmenter: Segmenter, samples: list, image_store: StageStore, store: StageStore,
                  batch_size: int = 8) -> dict:
    """Segment every stored image not yet in `store`: masks/<id>__<word>.png plus masks/<id>.json."""
    todo = [s for s in samples if not store.has(f"masks/{s.id}.json")]
    seconds = 0.0  # in segmenter.segment (a lazily loaded model's loading included), not in PNG writes
    for start in tqdm(range(0, len(todo), batch_size), desc=f"segment ({segmenter.name})", disable=not todo):
        batch = todo[start: start + batch_size]
        images = [PIL.Image.open(image_store.file(f"images/{s.id}.png")).convert("RGB") for s in batch]
        records = [{"prompt": s.row.prompt, **s.row.extra} for s in batch]
        t0 = time.perf_counter()
        results = segmenter.segment(images, [list(s.row.words) for s in batch], records)
        seconds += time.perf_counter() - t0
        for sample, per_word in zip(batch, results):
            meta = {}
            for word, wm in per_word.items():
                entry = {"reason": wm.reason, "boxes": wm.boxes.tolist(), "scores": wm.scores.tolist()}
                if wm.mask is not None:
                    entry["png"] = f"masks/{sample.id}__{_slug(word)}.png"
                    buf = io.BytesIO()
                    PIL.Image.fromarray(wm.mask.astype(np.uint8) * 255).save(buf, format="PNG")
                    write_atomic(store.file(entry["png"]), buf.getvalue())
                meta[word] = entry
            write_atomic(store.file(f"masks/{sample.id}.json"), json.dumps(meta).encode())
    stats = {"segmented": len(todo), "cached": len(samples) - len(todo)}
    if todo:
        stats.update(seconds=round(seconds, 3), seconds_per_image=round(seconds / len(todo), 4))
    return stats


def load_word_masks(store: StageStore, sample_id: str) -> dict[str, WordMask]:
    meta = json.loads(store.file(f"masks/{sample_id}.json").read_text())
    out = {}
    for word, entry in meta.items():
        boxes = np.array(entry["boxes"], np.float32).reshape(-1, 4)
        scores = np.array(entry["scores"], np.float32)
        mask = np.array(PIL.Image.open(store.file(entry["png"]))) > 127 if "png" in entry else None
        out[word] = WordMask(mask, entry["reason"], boxes, scores)
    return out
