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


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """`i/n` as (i, n) with 0 <= i < n; None for no sharding."""
    if not spec:
        return None
    i, _, n = str(spec).partition("/")
    if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        raise ValueError(f"shard={spec}: use i/n with 0 <= i < n, e.g. shard=0/4")
    return int(i), int(n)


def shard(samples: list[Sample], spec: str | None) -> list[Sample]:
    """`i/n`: every n-th prompt starting at i (all seeds of a prompt stay in one shard)."""
    if not spec:
        return samples
    i, n = parse_shard(spec)
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
