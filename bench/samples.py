"""Samples: one (prompt row, seed) each, with its words' token positions; sharding and stored token slots.

Light on purpose (no model code), so the scoring and reporting layers can name samples and the end-of-text
key without importing the generate stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.prompts import PromptRow

EOT = "<|endoftext|>"  # key of the end-of-text token's slot in a stored sample's words


@dataclass(frozen=True)
class Sample:
    id: str
    row: PromptRow
    seed: int
    positions: dict[str, list[int]]  # word -> token positions in the prompt


def make_samples(rows: list[PromptRow], seeds: list[int], positions: list[dict[str, list[int]]]) -> list[Sample]:
    return [Sample(f"{row.id}__s{seed}", row, int(seed), pos) for row, pos in zip(rows, positions) for seed in seeds]


def shard(samples: list[Sample], spec: str | None) -> list[Sample]:
    """`i/n`: every n-th prompt starting at i (all seeds of a prompt stay in one shard)."""
    if not spec:
        return samples
    i, n = (int(x) for x in str(spec).split("/"))
    if not 0 <= i < n:
        raise ValueError(f"shard={spec}: need 0 <= i < n")
    prompt_ids = list(dict.fromkeys(s.row.id for s in samples))
    mine = set(prompt_ids[i::n])
    return [s for s in samples if s.row.id in mine]


def sample_slots(sample: Sample, eot_position: int | None = None) -> tuple[list[int], dict[str, list[int]]]:
    """Distinct token positions of the sample (sorted) and, per word, its slots into that list; with
    `eot_position` the end-of-text token is kept too, under the key EOT (a chance baseline's input)."""
    positions = dict(sample.positions)
    if eot_position is not None:
        positions[EOT] = [eot_position]
    tokens = sorted({p for pos in positions.values() for p in pos})
    return tokens, {w: [tokens.index(p) for p in pos] for w, pos in positions.items()}
