"""Head relevance sources: for a word, one score per head (HeadIndex order); higher = more relevant.

- `FileRelevance` (`relevance=hrv_file`): published per-concept vectors (HRV's npy format), a word
  reaches its concept through a word -> concept map.
- `bench.hrv.HRVRelevance` (`relevance=hrv`, `hrv_word`): the same vectors computed here, label-free.
- `OracleRelevance` (`relevance=oracle`): per-head IoU against the pseudo ground truth, chosen on
  calibration folds and scored on held-out folds (k-fold by prompt).
- `RandomRelevance` (`relevance=random`): seeded random rankings, several draws (the control).

A source may split the scoring into parts (`Relevance.parts`): folds (each sample scored once, by the
relevance chosen without it) or draws (the relevance-using methods scored once per draw).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.aggregate import mean_of_heads, ranked_heads, resolve_k, word_head_maps
from bench.checks import parse_k
from bench.heads import HeadIndex
from bench.samples import EOT
from bench.score import heat_to_mask, iou, ious_over_taus, normalised_heat
from bench.store import GenerateStore, MaskStore


@dataclass
class RelevancePart:
    """Samples scored with one relevance at the given taus; `split` ("fold" | "draw" | None) and `index`
    label its rows in the long table."""

    split: str | None
    index: int
    relevance: "Relevance"
    samples: list
    taus: list[float]


class Relevance(ABC):
    """Scores heads for a word; `describe()` says what the scores were computed from (for tables)."""

    name: str = "relevance"

    @abstractmethod
    def vector(self, word: str, head_index: HeadIndex) -> np.ndarray:
        """(H,) float scores in HeadIndex order."""

    @abstractmethod
    def describe(self) -> str:
        """Source, the prompts / split it was computed on and its n, printed with every table that uses it."""

    def label(self) -> str:
        """Short form of `describe()` for a table column."""
        return self.name

    def check_words(self, words: list[str]) -> None:
        """Raise one line naming every word this source cannot score (called before any generation)."""

    def check_heads(self, head_index: HeadIndex) -> None:
        """Raise one line when stored vectors do not name this model's heads (called before any generation)."""

    def prepare(self, model, cache_root: str, model_config: dict, words: list[str]) -> dict:
        """Compute what the source needs from the model (a cached stage); returns its statistics."""
        return {}

    def parts(self, samples: list, gen_store: GenerateStore, mask_store: MaskStore,
              taus: list[float]) -> list[RelevancePart]:
        """How the samples are scored; by default all of them with this relevance at every tau."""
        return [RelevancePart(None, 0, self, samples, taus)]


# --- concept vectors (published or computed) --------------------------------------------------------------

def read_concept_words(path: str | Path) -> dict[str, list[str]]:
    """{concept: words} from HRV's numbered text list (a concept line, then `1. word` lines; BOM and CRLF
    allowed) or from JSON (an object {concept: [words]} or a list of concept names)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"concept list {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json":
        data = json.loads(text)
        return {str(c): [] for c in data} if isinstance(data, list) else {str(c): list(w) for c, w in data.items()}
    out: dict[str, list[str]] = {}
    for line in (ln.strip() for ln in text.splitlines()):
        if not line:
            continue
        if line[0].isdigit():
            if not out:
                raise ValueError(f"{path}: word line {line!r} before any concept name")
            out[list(out)[-1]].append(line.split(".", 1)[1].strip() if "." in line else line)
        else:
            out[line] = []
    return out


def read_concept_list(path: str | Path) -> list[str]:
    """Concept names, in order, from HRV's numbered text list or JSON (see `read_concept_words`)."""
    return list(read_concept_words(path))


def read_word_to_concept(source: dict | str | list | None) -> dict[str, str]:
    """Lower-cased {word: concept} from a dict, a JSON file, or a list of them (later ones win)."""
    if source is None:
        return {}
    if isinstance(source, (str, Path)):
        if not Path(source).exists():
            raise FileNotFoundError(f"word -> concept map {source} does not exist")
        source = json.loads(Path(source).read_text())
    if not isinstance(source, Mapping):
        return {k: v for part in source for k, v in read_word_to_concept(part).items()}
    return {str(k).lower(): str(v) for k, v in source.items()}


class ConceptRelevance(Relevance):
    """Per-concept vectors (C, H) over named heads; a word reaches its concept through `word_to_concept`."""

    def __init__(self, word_to_concept: dict | str | list | None = None, default_concept: str | None = None):
        self.word_to_concept = read_word_to_concept(word_to_concept)
        self.default_concept = default_concept
        self.concepts: list[str] = []
        self.vectors: np.ndarray | None = None  # (C, H) float64, columns in `head_names` order
        self.head_names: list[str] = []
        self._perm: dict[int, tuple[HeadIndex, np.ndarray]] = {}  # id -> (the index, kept alive; permutation)

    def concept_of(self, word: str) -> str:
        concept = self.word_to_concept.get(word.lower(), self.default_concept)
        if concept is None:
            raise KeyError(f"word {word!r} has no concept: add it to relevance.word_to_concept")
        if concept not in self.concepts:
            raise KeyError(f"concept {concept!r} (for {word!r}) is not one of {self.concepts}")
        return concept

    def check_words(self, words: list[str]) -> None:
        missing = [] if self.default_concept else sorted({w for w in words if w.lower() not in self.word_to_concept})
        if missing:
            raise KeyError(f"{len(missing)} word(s) have no concept: {missing}; add them to relevance.word_to_concept")
        for w in words:
            self.concept_of(w)  # a word mapped onto a concept the vectors lack

    def _in_index_order(self, row: np.ndarray, head_index: HeadIndex) -> np.ndarray:
        if id(head_index) not in self._perm:
            self._perm[id(head_index)] = (head_index, head_index.from_hrv_names(self.head_names))
        perm = self._perm[id(head_index)][1]
        out = np.empty(len(head_index))
        out[perm] = row
        return out

    def concept_vector(self, concept: str, head_index: HeadIndex) -> np.ndarray:
        """(H,) vector of a concept, HeadIndex order."""
        if self.vectors is None:
            raise RuntimeError(f"{self.name}: vectors are not computed yet (call prepare first)")
        if concept not in self.concepts:
            raise KeyError(f"concept {concept!r} is not one of {self.concepts}")
        return self._in_index_order(self.vectors[self.concepts.index(concept)], head_index)

    def vector(self, word: str, head_index: HeadIndex) -> np.ndarray:
        return self.concept_vector(self.concept_of(word), head_index)


class FileRelevance(ConceptRelevance):
    """Published head relevance vectors (e.g. HRV's category_vectors_*.npy + head_index_*.npy)."""

    name = "hrv_file"

    def __init__(self, vectors: str, head_names: str, concepts: str, word_to_concept: dict | str | list | None = None,
                 default_concept: str | None = None):
        for p in (vectors, head_names, concepts):
            if not Path(p).exists():
                raise FileNotFoundError(f"relevance file {p} does not exist: download the published vectors from "
                                        "github.com/SNU-DRL/HRV (final_result/, descriptions/; README: 'The published "
                                        "HRV vectors') and set relevance.vectors / head_names / concepts to them")
        super().__init__(word_to_concept, default_concept)
        self.vectors = np.load(vectors).astype(np.float64)  # (C, H)
        try:  # allow_pickle stays off: a relevance file is data and runs no code
            self.head_names = [str(n) for n in np.load(head_names)]
        except ValueError as err:
            raise ValueError(f"{head_names}: not a plain array of head names ({err}); use the published file") from None
        self.head_names_path = str(head_names)
        self.concepts = read_concept_list(concepts)
        if self.vectors.shape != (len(self.concepts), len(self.head_names)):
            raise ValueError(f"{vectors}: shape {self.vectors.shape} != (concepts {len(self.concepts)}, "
                             f"heads {len(self.head_names)})")
        self.source = Path(vectors).name

    def check_heads(self, head_index: HeadIndex) -> None:
        try:
            head_index.from_hrv_names(self.head_names)
        except ValueError as err:
            raise ValueError(f"relevance file {self.head_names_path}: {err}; use the vectors of this model") from None

    def describe(self) -> str:
        return (f"hrv_file ({self.source}; label-free, computed by its authors on their own probe prompts; "
                f"{len(self.concepts)} concepts x {len(self.head_names)} heads)")

    def label(self) -> str:
        return f"hrv_file[{self.source}]"


# --- random control -------------------------------------------------------------------------------------------

class RandomRelevance(Relevance):
    """Seeded random scores per (word, draw): the random-k control; `draws` > 1 scores every draw."""

    name = "random"

    def __init__(self, seed: int = 0, draws: int = 1, draw: int = 0):
        if draws < 1:
            raise ValueError(f"relevance.draws must be >= 1, got {draws}")
        self.seed, self.draws, self.draw = seed, draws, draw

    def vector(self, word: str, head_index: HeadIndex) -> np.ndarray:
        tag = f"{self.seed}:{word}" if self.draw == 0 else f"{self.seed}:{word}:{self.draw}"
        digest = int(hashlib.sha256(tag.encode()).hexdigest()[:8], 16)
        return np.random.default_rng(digest).random(len(head_index))

    def parts(self, samples, gen_store, mask_store, taus):
        if self.draws == 1:
            return super().parts(samples, gen_store, mask_store, taus)
        return [RelevancePart("draw", d, RandomRelevance(self.seed, self.draws, d), samples, taus)
                for d in range(self.draws)]

    def describe(self) -> str:
        return f"random (seed {self.seed}, {self.draws} draw(s); a control, no information)"

    def label(self) -> str:
        return f"random[{self.draws} draws]"


# --- held-out oracle ---------------------------------------------------------------------------------------------

class VectorRelevance(Relevance):
    """Fixed vectors per word (HeadIndex order) with a fallback for other words: one oracle fold."""

    name = "oracle_fold"

    def __init__(self, vectors: dict[str, np.ndarray], fallback: np.ndarray, text: str):
        self.vectors, self.fallback, self.text = vectors, fallback, text

    def vector(self, word: str, head_index: HeadIndex) -> np.ndarray:
        out = self.vectors.get(word, self.fallback)
        if len(out) != len(head_index):
            raise ValueError(f"oracle vector has {len(out)} heads, the HeadIndex {len(head_index)}")
        return out

    def describe(self) -> str:
        return self.text


@dataclass
class OracleFold:
    """Relevance chosen on the calibration folds, to score the held-out fold's samples."""

    index: int
    held_out: list  # samples
    relevance: VectorRelevance
    tau: float
    n_calibration_pairs: int
    words_fallback: list[str] = field(default_factory=list)  # held-out words unseen in calibration


def prompt_folds(prompt_ids: list[str], n_folds: int, seed: int = 0) -> dict[str, int]:
    """Prompt id -> fold (seeded shuffle, round robin), so a prompt's seeds never straddle folds."""
    unique = sorted(set(prompt_ids))
    if not 2 <= n_folds <= len(unique):
        raise ValueError(f"oracle needs 2 <= folds <= number of prompts ({len(unique)}), got {n_folds}")
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[j]: i % n_folds for i, j in enumerate(order)}


def head_ious(samples: list, gen_store: GenerateStore, mask_store: MaskStore, taus: list[float],
              chunk: int = 64) -> tuple[list[tuple], np.ndarray]:
    """Per-head IoU of every scored (sample, word): each head's own upsampled map, binarised by
    `heat_to_mask` at each tau, against the pseudo-GT mask. Returns [(sample, word)] and (P, n_taus, H)."""
    head_index, size = gen_store.head_index(), gen_store.geometry().heatmap_size
    pairs, out = [], []
    for sample in tqdm(samples, desc="oracle: per-head IoU", unit="sample"):
        stored, masks = gen_store.sample(sample.id), mask_store.masks(sample.id)
        for word, slots in stored["words"].items():
            if word == EOT or masks[word].mask is None:
                continue  # excluded pair: no reference to calibrate on
            ref = torch.from_numpy(masks[word].mask)
            maps = word_head_maps(stored["maps"], head_index, slots, size)  # (H, s, s)
            per_tau = np.empty((len(taus), len(head_index)))
            for start in range(0, len(head_index), chunk):
                norm = normalised_heat(maps[start: start + chunk], tuple(ref.shape))  # heat_to_mask before `> tau`
                per_tau[:, start: start + chunk] = ious_over_taus(norm, ref, taus)
            pairs.append((sample, word))
            out.append(per_tau)
    return pairs, np.nan_to_num(np.stack(out)) if out else np.zeros((0, len(taus), len(head_index)))


def oracle_relevance(samples: list, gen_store: GenerateStore, mask_store: MaskStore, n_folds: int = 3,
                     taus: list[float] = (0.4,), scope: str = "word", tune_k: int | float | str = "25%",
                     seed: int = 0) -> list[OracleFold]:
    """Held-out oracle: per fold, relevance = mean per-head IoU over the calibration folds' pairs (per word,
    falling back to all calibration pairs for a word they lack; or pooled with scope="pooled").

    With several `taus`, each fold's tau is the one whose top-`tune_k` selective maps score the best mIoU
    on its calibration pairs (relevance re-estimated at that tau); its held-out samples are scored at it.
    """
    if scope not in ("word", "pooled"):
        raise ValueError(f"oracle scope must be word or pooled, got {scope!r}")
    candidates = [float(t) for t in taus]
    fold_of = prompt_folds([s.row.id for s in samples], n_folds, seed)
    pairs, ious = head_ious(samples, gen_store, mask_store, candidates)  # (P, n_taus, H)
    pair_fold = np.array([fold_of[s.row.id] for s, _ in pairs], dtype=np.int64)
    pair_word = np.array([w for _, w in pairs], dtype=object)

    def fit(fold: int, t: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        calib = pair_fold != fold
        if not calib.any():
            raise ValueError(f"oracle fold {fold}: no scored pair in its calibration folds")
        pooled = ious[calib, t].mean(0)
        if scope == "pooled":
            return {}, pooled
        return {w: ious[calib & (pair_word == w), t].mean(0) for w in set(pair_word[calib])}, pooled

    fits = {(f, t): fit(f, t) for f in range(n_folds) for t in range(len(candidates))}
    best = {f: 0 for f in range(n_folds)}
    if len(candidates) > 1:
        best = _tune_tau(pairs, pair_fold, fits, candidates, n_folds, gen_store, mask_store, tune_k)
    folds = []
    for f in range(n_folds):
        per_word, pooled = fits[(f, best[f])]
        held = [s for s in samples if fold_of[s.row.id] == f]
        held_words = sorted({w for s in held for w in s.row.words})
        text = (f"oracle fold {f}: per-head IoU on {int((pair_fold != f).sum())} calibration pairs "
                f"at tau {candidates[best[f]]}")
        folds.append(OracleFold(f, held, VectorRelevance(per_word, pooled, text), candidates[best[f]],
                                int((pair_fold != f).sum()),
                                [w for w in held_words if w not in per_word] if scope == "word" else []))
    return folds


def _tune_tau(pairs: list[tuple], pair_fold: np.ndarray, fits: dict, candidates: list[float], n_folds: int,
              gen_store: GenerateStore, mask_store: MaskStore, tune_k: int | float | str) -> dict[int, int]:
    """Per fold, the candidate tau with the best calibration mIoU of top-k maps (relevance fit at that tau)."""
    head_index, size = gen_store.head_index(), gen_store.geometry().heatmap_size
    score = np.zeros((n_folds, len(candidates)))
    for p, (sample, word) in enumerate(tqdm(pairs, desc="oracle: tune tau", unit="pair")):
        stored = gen_store.sample(sample.id)
        ref = torch.from_numpy(mask_store.masks(sample.id)[word].mask)
        maps = word_head_maps(stored["maps"], head_index, stored["words"][word], size)
        for f in range(n_folds):
            if pair_fold[p] == f:
                continue  # this pair is held out for fold f
            for t, tau in enumerate(candidates):
                per_word, pooled = fits[(f, t)]
                order = ranked_heads(per_word.get(word, pooled))
                heat = mean_of_heads(maps, np.sort(order[: resolve_k(tune_k, len(order))]))
                score[f, t] += float(np.nan_to_num(iou(heat_to_mask(heat, ref.shape, tau), ref).item()))
    return {f: int(np.argmax(score[f])) for f in range(n_folds)}  # ties: the first candidate


class OracleRelevance(Relevance):
    """Ground-truth-chosen relevance, honest version: k-fold by prompt, each fold scored with the relevance
    (and tau, when `taus` is given) chosen on the other folds. Rows of the long table carry their `fold`."""

    name = "oracle"

    def __init__(self, folds: int = 3, scope: str = "word", taus: list[float] | None = None,
                 tune_k: int | float | str = "25%", seed: int = 0):
        if scope not in ("word", "pooled"):
            raise ValueError(f"relevance.scope must be word or pooled, got {scope!r}")
        if folds < 2:
            raise ValueError(f"relevance.folds must be >= 2 (calibration and held-out), got {folds}")
        parse_k(tune_k)
        self.n_folds, self.scope, self.tune_k, self.seed = folds, scope, tune_k, seed
        self.taus = [float(t) for t in taus] if taus else None
        self.folds: list[OracleFold] = []
        self.candidates: list[float] = self.taus or []

    def vector(self, word: str, head_index: HeadIndex) -> np.ndarray:
        raise RuntimeError("oracle relevance exists per fold only: score through parts() (evaluate_stage does)")

    def parts(self, samples, gen_store, mask_store, taus):
        self.candidates = self.taus or list(taus)
        self.folds = oracle_relevance(samples, gen_store, mask_store, self.n_folds, self.candidates, self.scope,
                                      self.tune_k, self.seed)
        return [RelevancePart("fold", f.index, f.relevance, f.held_out, [f.tau]) for f in self.folds]

    def describe(self) -> str:
        text = (f"oracle (per-head IoU vs the pseudo ground truth; chosen on calibration folds, scored on held-out "
                f"folds: {self.n_folds}-fold by prompt, seed {self.seed}; {self.scope} scope")
        if len(self.candidates) > 1:
            text += f"; tau tuned on calibration folds from {self.candidates} (top {self.tune_k} mIoU)"
        if self.folds:
            text += ("; per fold [calibration pairs, tau, held-out words without calibration pairs]: "
                     + ", ".join(f"{f.index}: [{f.n_calibration_pairs}, {f.tau}, {len(f.words_fallback)}]"
                                 for f in self.folds))
        return text + ")"

    def label(self) -> str:
        return f"oracle[{self.n_folds} folds, held-out]"
