"""Shapes-world figures the issue's floors are stated for, from finished `make bench` sweep folders:
image-mode mIoU of shape words and colour words per method and relevance at tau 0.4 (oracle rows: the
tau chosen on calibration folds) with n, and generated-mode fidelity. Writes Markdown to stdout.

    python scripts/shapes_floors.py <image-mode sweep dir> <generated-mode sweep dir>
"""

import sys
from pathlib import Path

from bench.shapes.world import SHAPES
from bench.store import read_table


def word_kind_table(sweep: Path, tau: float = 0.4) -> str:
    scores = read_table(sweep)
    # the oracle job scores each held-out fold at the tau its calibration folds chose: keep those rows
    tuned = scores["relevance"].eq("oracle") if "relevance" in scores.columns else False
    scores = scores[((scores["tau"] == tau) | tuned) & scores["excluded"].isna()]
    scores = scores.assign(kind=scores["word"].map(lambda w: "shape" if w in SHAPES else "colour"))
    keys = [c for c in ("relevance", "method", "variant") if c in scores.columns]
    table = scores.groupby([*keys, "kind"])["iou"].agg(["mean", "count"]).unstack("kind")
    table.columns = [f"{stat} {kind}" for stat, kind in table.columns]
    return table.round(4).to_markdown()


def main(image_sweep: str, generated_sweep: str) -> None:
    print(f"## Image mode, tau 0.4: mIoU by word kind ({image_sweep})\n")
    print(word_kind_table(Path(image_sweep)) + "\n")
    print(f"## Generated mode, tau 0.4: mIoU by word kind ({generated_sweep})\n")
    print(word_kind_table(Path(generated_sweep)) + "\n")
    for fidelity in sorted(Path(generated_sweep).glob("*/fidelity.md")):
        print(f"- {fidelity.parent.name}: {fidelity.read_text().strip()}")


if __name__ == "__main__":
    main(*sys.argv[1:])
