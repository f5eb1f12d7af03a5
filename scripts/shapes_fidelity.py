"""How faithfully a shapes model draws eval-split captions (colour segmenter + shape check).

    .venv/bin/python scripts/shapes_fidelity.py data/shapes/models/seed_0 --n 64 --grid seed_0.png

Scenes and shapes are those of the world the model was trained on (its shapes_model.json). Per prompted object:
present = its colour covers >= MIN_PIXELS pixels; shape_ok = present and classify_shape of that colour's mask is
the prompted shape. extra = an unprompted palette colour covers >= MIN_PIXELS pixels.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.shapes.pipeline import load_shapes_pipeline
from bench.shapes.world import COLOURS, caption, classify_shape, colour_mask, load_world, split_scene

MIN_PIXELS = 12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--n", type=int, default=64, help="eval scenes")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--grid", type=Path, help="write the generated images as one PNG row per 16")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    pipe = load_shapes_pipeline(args.model)
    world = load_world(args.model)
    scenes = [split_scene("eval", i, world) for i in range(args.n)]
    prompts = [caption(s)[0] for s in scenes]
    generators = [torch.Generator().manual_seed(i) for i in range(args.n)]
    images = pipe(prompts, generators, args.steps, args.guidance)  # (N, S, S, 3)
    present = shape_ok = n_objects = extra = 0
    for scene, image in zip(scenes, images):
        prompted = {obj.colour for obj in scene.objects}
        for obj in scene.objects:
            mask = colour_mask(image, obj.colour)
            n_objects += 1
            if mask.sum() >= MIN_PIXELS:
                present += 1
                shape_ok += classify_shape(mask, world.shapes) == obj.shape
        extra += any(colour_mask(image, c).sum() >= MIN_PIXELS for c in COLOURS if c not in prompted)
    print(f"{args.model}: {args.n} images, {n_objects} objects, guidance {args.guidance}")
    print(f"present {present / n_objects:.3f}  shape_ok {shape_ok / n_objects:.3f}  "
          f"extra-colour images {extra / args.n:.3f}")
    if args.grid:
        rows = [np.concatenate(list(images[i : i + 16]), axis=1) for i in range(0, args.n - args.n % 16, 16)]
        grid = np.concatenate(rows, axis=0)
        Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(args.grid)


if __name__ == "__main__":
    main()
