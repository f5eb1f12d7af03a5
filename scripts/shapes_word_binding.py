"""Does a shapes model use its shape words? Three probes of one model, printed as Markdown.

    .venv/bin/python scripts/shapes_word_binding.py MODEL [--n 16]

1. Drawn shape per prompted shape: `--n` images of "a red <shape>" per shape of the model's world (25 DDIM steps,
   guidance 2), the red mask classified by `classify_shape`. A model that binds shape words puts its counts on
   the diagonal; one that ignores them draws the same mix for every prompt.
2. The mean image it predicts from pure noise (t = T-1, where the prediction is E[x0 | caption]): the aspect
   (horizontal / vertical variance) of its red mass per prompted shape, beside the same statistic of the world's
   own one-object train scenes (what a model that learned the caption's mean image predicts).
3. How far apart the text encoder puts the shape words: the distance between the final hidden states at the
   shape position of "a red <shape>" for each pair of shapes, relative to the states' norm, beside the same for
   colour words ("a <colour> square", at the colour position).
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from bench.shapes.pipeline import load_shapes_pipeline
from bench.shapes.world import COLOURS, classify_shape, colour_mask, load_world, render, split_scene


def aspect(weights: np.ndarray) -> float:
    """Horizontal over vertical variance of a non-negative (H, W) mass."""
    h, w = weights.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(float)
    p = weights / weights.sum()
    cx, cy = (p * xs).sum(), (p * ys).sum()
    return float((p * (xs - cx) ** 2).sum() / (p * (ys - cy) ** 2).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--n", type=int, default=16, help="images per prompted shape")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    pipe, world = load_shapes_pipeline(args.model), load_world(args.model)
    print(f"# Shape-word binding of {args.model}\n")

    print(f"## Drawn shape of 'a red <shape>' ({args.n} images each, 25 steps, guidance 2)\n")
    print("| prompted | " + " | ".join(world.shapes) + " | none | share drawn as prompted |")
    print("|---" * (len(world.shapes) + 3) + "|")
    correct = 0
    for shape in world.shapes:
        generators = [torch.Generator().manual_seed(i) for i in range(args.n)]
        images = pipe([f"a red {shape}"] * args.n, generators, 25, 2.0)  # (N, S, S, 3)
        drawn = Counter(classify_shape(colour_mask(image, "red"), world.shapes) for image in images)
        correct += drawn[shape]
        print(f"| {shape} | " + " | ".join(str(drawn[s]) for s in world.shapes) + f" | {drawn[None]} | "
              f"{drawn[shape] / args.n:.2f} |")
    print(f"\nOverall {correct / (args.n * len(world.shapes)):.3f} (chance {1 / len(world.shapes):.2f}).\n")

    print("## Aspect of the predicted mean image at t = T-1 vs the world's (one-object train scenes)\n")
    world_masks: dict[str, list[np.ndarray]] = {s: [] for s in world.shapes}
    for i in range(4000):
        scene = split_scene("train", i, world)
        if len(scene.objects) == 1:
            world_masks[scene.objects[0].shape].append(render(scene, world.size)[1][scene.objects[0].shape])
    t = pipe.scheduler.config.num_train_timesteps - 1
    a_t = pipe.scheduler.alphas_cumprod[t]
    noise = torch.randn(32, 3, world.size, world.size, generator=torch.Generator().manual_seed(0))
    print("| prompted | model | world |\n|---|---|---|")
    for shape in world.shapes:
        with torch.no_grad():
            states = pipe.text_encoder(pipe.token_ids([f"a red {shape}"] * 32))[0]  # (B, L, D)
            out = pipe.unet(noise, torch.full((32,), t), encoder_hidden_states=states).sample  # (B, 3, S, S)
        if pipe.scheduler.config.prediction_type == "v_prediction":
            x0 = a_t.sqrt() * noise - (1 - a_t).sqrt() * out
        else:
            x0 = (noise - (1 - a_t).sqrt() * out) / a_t.sqrt()
        rgb = ((x0.clamp(-1, 1) + 1) / 2).mean(0).numpy()  # (3, S, S)
        red = np.clip(rgb[0] - np.maximum(rgb[1], rgb[2]), 0, None)  # red, not white or yellow
        print(f"| {shape} | {aspect(red):.2f} | {aspect(np.mean(world_masks[shape], 0)):.2f} |")

    print("\n## Distance between words in the text encoder's states (relative to the state norm)\n")
    with torch.no_grad():
        shape_states = pipe.text_encoder(pipe.token_ids([f"a red {s}" for s in world.shapes]))[0][:, 3]  # (S, D)
        colour_states = pipe.text_encoder(pipe.token_ids([f"a {c} square" for c in COLOURS]))[0][:, 2]  # (C, D)
    for name, states in (("shape words", shape_states), ("colour words", colour_states)):
        norm = states.norm(dim=-1).mean()
        gaps = [float((a - b).norm() / norm) for a, b in itertools.combinations(states, 2)]
        print(f"- {name}: mean pairwise distance / norm {np.mean(gaps):.3f} (min {np.min(gaps):.3f})")


if __name__ == "__main__":
    main()
