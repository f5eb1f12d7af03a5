"""Shapes-world figures the issue's floors are stated for, from finished `make bench` sweep folders:
image-mode mIoU of shape words and colour words per method and relevance at tau 0.4 (oracle rows: the
tau chosen on calibration folds) with n, and generated-mode fidelity. Writes Markdown to stdout.

    python scripts/shapes_floors.py <image-mode sweep dir> <generated-mode sweep dir>
"""

import sys
from pathlib import Path

from bench.shapes.headline import word_kind_miou
from bench.store import read_table


def word_kind_table(sweep: Path, tau: float = 0.4) -> str:
    return word_kind_miou(read_table(sweep), tau).round(4).to_markdown()


def main(image_sweep: str, generated_sweep: str) -> None:
    print(f"## Image mode, tau 0.4: mIoU by word kind ({image_sweep})\n")
    print(word_kind_table(Path(image_sweep)) + "\n")
    print(f"## Generated mode, tau 0.4: mIoU by word kind ({generated_sweep})\n")
    print(word_kind_table(Path(generated_sweep)) + "\n")
    for fidelity in sorted(Path(generated_sweep).glob("*/fidelity.md")):
        print(f"- {fidelity.parent.name}: {fidelity.read_text().strip()}")


if __name__ == "__main__":
    main(*sys.argv[1:])
