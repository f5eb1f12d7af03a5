"""Head relevance sources: for a word, one score per head (HeadIndex order); higher = more relevant.

`FileRelevance` reads published vectors (concepts x heads npy + head-name npy, HRV's format) and maps
a word to a concept; `RandomRelevance` is the seeded random-ranking control.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from bench.heads import HeadIndex


class Relevance(ABC):
    """Scores heads for a word; `describe()` says what the scores were computed from (for tables)."""

    name: str = "relevance"

    @abstractmethod
    def vector(self, word: str, head_index: HeadIndex) -> np.ndarray:
        """(H,) float scores in HeadIndex order."""

    @abstractmethod
    def describe(self) -> str:
        """Source and split, printed with every table that uses it."""


def read_concept_list(path: str | Path) -> list[str]:
    """Concept names from HRV's numbered text list (a concept name line, then `1. word` lines) or JSON."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json":
        return list(json.loads(text))
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip()[0].isdigit()]


class FileRelevance(Relevance):
    """Published head relevance vectors (e.g. HRV's category_vectors_*.npy + head_index_*.npy)."""

    name = "hrv_file"

    def __init__(self, vectors: str, head_names: str, concepts: str, word_to_concept: dict | str | None = None,
                 default_concept: str | None = None):
        for p in (vectors, head_names, concepts):
            if not Path(p).exists():
                raise FileNotFoundError(f"relevance file {p} does not exist: download the published vectors "
                                        "and set relevance.vectors / head_names / concepts to their paths")
        self.vectors = np.load(vectors).astype(np.float64)  # (C, H)
        self.head_names = [str(n) for n in np.load(head_names, allow_pickle=True)]
        self.concepts = read_concept_list(concepts)
        if self.vectors.shape != (len(self.concepts), len(self.head_names)):
            raise ValueError(f"{vectors}: shape {self.vectors.shape} != (concepts {len(self.concepts)}, "
                             f"heads {len(self.head_names)})")
        if isinstance(word_to_concept, str):
            word_to_concept = json.loads(Path(word_to_concept).read_text())
        self.word_to_concept = {k.lower(): v for k, v in (word_to_concept or {}).items()}
        self.default_concept = default_concept
        self.source = Path(vectors).name
        self._perm: dict[int, np.ndarray] = {}

    def concept_of(self, word: str) -> str:
        concept = self.word_to_concept.get(word.lower(), self.default_concept)
        if concept is None:
            raise KeyError(f"word {word!r} has no concept: add it to relevance.word_to_concept")
        if concept not in self.concepts:
            raise KeyError(f"concept {concept!r} (for {word!r}) is not one of the file's {self.concepts}")
        return concept

    def vector(self, word: str, head_index: HeadIndex) -> np.ndarray:
        perm = self._perm.setdefault(id(head_index), head_index.from_hrv_names(self.head_names))
        out = np.empty(len(head_index))
        out[perm] = self.vectors[self.concepts.index(self.concept_of(word))]
        return out

    def describe(self) -> str:
        return f"hrv_file ({self.source}; label-free, computed by its authors on their probe prompts)"


class RandomRelevance(Relevance):
    """Seeded random scores per (word, draw): the random-k control."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def vector(self, word: str, head_index: HeadIndex) -> np.ndarray:
        digest = int(hashlib.sha256(f"{self.seed}:{word}".encode()).hexdigest()[:8], 16)
        return np.random.default_rng(digest).random(len(head_index))

    def describe(self) -> str:
        return f"random (seed {self.seed}; a control, no information)"
