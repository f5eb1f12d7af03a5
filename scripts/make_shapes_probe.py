"""Write data/prompts/shapes_probe.jsonl: captions of 64 train-split scenes, the shapes world's neutral
probe prompts for HRV (captions only: no image or mask of any split is used to rank heads).
Run: python scripts/make_shapes_probe.py
"""

import json
from pathlib import Path

from bench.shapes.world import caption, split_scene

OUT = Path(__file__).resolve().parents[1] / "data" / "prompts" / "shapes_probe.jsonl"

if __name__ == "__main__":
    lines = []
    for i in range(64):
        text, words = caption(split_scene("train", 1_000_000 + i))
        lines.append(json.dumps({"id": f"shapes_probe_{i:02d}", "prompt": text, "words": words}))
    OUT.write_text("\n".join(lines) + "\n")
