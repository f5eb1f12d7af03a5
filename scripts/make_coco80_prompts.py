"""Write data/prompts/coco80.jsonl: 300 seeded prompts with 1-3 COCO object nouns each (SDXL setting).

Nouns are COCO's 80 classes as written in data/concepts/coco80_to_hrv.json ("sports ball" is "ball").
No prompt holds two nouns where one contains the other ("dog" / "hot dog"), so every word's tokens
belong to one object. Run: python scripts/make_coco80_prompts.py
"""

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = {
    1: ["a photo of {a}.", "{a} in the middle of the frame.", "a close-up photo of {a}."],
    2: ["a photo of {a} and {b}.", "{a} next to {b}.", "{a} in front of {b}."],
    3: ["a photo of {a}, {b} and {c}.", "{a}, {b} and {c} on a sunny day."],
}
COUNTS = {1: 100, 2: 120, 3: 80}


def article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def main(seed: int = 0) -> None:
    nouns = sorted(json.loads((ROOT / "data/concepts/coco80_to_hrv.json").read_text()))
    rng = random.Random(seed)
    lines = []
    for n_objects, count in COUNTS.items():
        for i in range(count):
            while True:
                words = rng.sample(nouns, n_objects)
                if not any(a != b and a in b for a in words for b in words):
                    break
            template = rng.choice(TEMPLATES[n_objects])
            prompt = template.format(**dict(zip("abc", map(article, words))))
            lines.append(json.dumps({"id": f"coco{n_objects}_{i:03d}", "prompt": prompt[0].upper() + prompt[1:],
                                     "words": words}))
    out = ROOT / "data/prompts/coco80.jsonl"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} prompts to {out}")


if __name__ == "__main__":
    main()
