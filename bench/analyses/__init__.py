"""Analyses: what a run computes from its stored images, maps and masks beyond the score table.

An `analyses:` config entry builds one `Analysis`; `bench.run` calls `check(relevance, rows)` for every
entry before the model loads, and after scoring calls the entry with the run's samples, stores, relevance
source and tau, printing the text it returns. One module per analysis: `polysemy` (experiment 3's
misinterpretation diagnosis), `fidelity` (shapes world, generated mode) and `head_diagnostics` (relevance vs
each head's own held-out IoU).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from bench.prompts import PromptRow
from bench.relevance import Relevance
from bench.samples import Sample
from bench.store import GenerateStore, MaskStore


class Analysis(ABC):
    """One analysis of a run; writes its files into the run directory and returns the text it reports."""

    name: str  # its files' stem and, by convention, its key under `analyses:`

    def check(self, relevance: Relevance | None, rows: list[PromptRow]) -> None:
        """Raise a one-line error before the model loads when the run cannot feed this analysis."""

    @abstractmethod
    def __call__(self, samples: list[Sample], gen_store: GenerateStore, mask_store: MaskStore,
                 relevance: Relevance | None, tau: float | list[float], run_dir: Path) -> str:
        """Analyse the run's stored samples (tau: the run's, a sweep's first value is used); returns the
        Markdown or text it wrote."""
