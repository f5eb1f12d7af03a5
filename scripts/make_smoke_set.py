"""Write data/smoke: six prompts with fixture masks (ellipses and boxes at 128 px) for the pipeline check.

The masks are fixtures, not what any model draws; they let the whole harness run offline.
Run: python scripts/make_smoke_set.py
"""

import json
from pathlib import Path

import numpy as np
import PIL.Image

OUT = Path(__file__).resolve().parents[1] / "data" / "smoke"
SIZE = 128
PROMPTS = [
    ("cat_sofa", "a cat sitting on a red sofa",
     {"cat": ("ellipse", 40, 30, 90, 80), "sofa": ("box", 10, 60, 118, 120)}),
    ("dog_ball", "a dog and a ball in the park",
     {"dog": ("ellipse", 20, 30, 80, 100), "ball": ("ellipse", 85, 80, 115, 110)}),
    ("two_birds", "a bird and another bird on a wire", {"bird": ("box", 20, 20, 110, 60)}),
    ("hydrant", "a motorcycle parked by a fire hydrant", {"motorcycle": ("box", 5, 40, 80, 110),
                                                          "fire hydrant": ("box", 90, 50, 120, 115)}),
    ("teddy", "a teddy bear on a bed", {"teddy bear": ("ellipse", 40, 20, 90, 80), "bed": ("box", 0, 60, 128, 128)}),
    ("broccoli", "a bowl of broccoli",
     {"bowl": ("ellipse", 20, 50, 108, 110), "broccoli": ("ellipse", 35, 30, 95, 80)}),
]


def draw(kind: str, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    if kind == "box":
        return (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def main() -> None:
    (OUT / "masks").mkdir(parents=True, exist_ok=True)
    lines = []
    for pid, prompt, shapes in PROMPTS:
        masks = {}
        for word, spec in shapes.items():
            name = f"masks/{pid}__{word.replace(' ', '_')}.png"
            PIL.Image.fromarray(draw(*spec).astype(np.uint8) * 255).save(OUT / name)
            masks[word] = name
        lines.append(json.dumps({"id": pid, "prompt": prompt, "words": list(shapes), "masks": masks}))
    (OUT / "prompts.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
