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
4. Where the shape is decided: 32 rendered one-object scenes noised to t0, then DDIM (50-step grid, no guidance)
   down to 0 with the true caption or with one naming another shape; the share of results whose object is
   classified as the scene's shape and, for the wrong caption, as the caption's. Where the wrong caption still
   gives the scene's shape, the noisy image has decided; where it gives the caption's, the caption does.
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
from bench.shapes.world import COLOURS, classify_shape, colour_mask, load_world, render, sample_scene, split_scene


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

    print("\n## Caption or noisy image: what decides the drawn shape, by starting noise level\n")
    print("| t0 | true caption: scene's shape | other shape's caption: scene's shape | ... the caption's shape |")
    print("|---|---|---|---|")
    for t0, true_ok, wrong_scene, wrong_caption in decided_shape(pipe, world):
        print(f"| {t0} | {true_ok:.2f} | {wrong_scene:.2f} | {wrong_caption:.2f} |")


def decided_shape(pipe, world, n: int = 32, t0s: tuple[int, ...] = (990, 960, 930, 900, 850, 800)):
    """Probe 4: per t0, the shares (true caption -> scene's shape, other caption -> scene's shape, other caption
    -> caption's shape) over n one-object scenes (their own seeded stream), DDIM without guidance from t0."""
    rng = np.random.default_rng(7)
    scenes = [sample_scene(rng, 1, world) for _ in range(n)]
    x0 = torch.from_numpy(np.stack([render(s, world.size)[0] for s in scenes])).permute(0, 3, 1, 2).float()
    x0 = x0 / 127.5 - 1  # (N, 3, S, S)
    objects = [s.objects[0] for s in scenes]
    others = [world.shapes[(world.shapes.index(o.shape) + 1 + i % (len(world.shapes) - 1)) % len(world.shapes)]
              for i, o in enumerate(objects)]
    captions = {"true": [f"a {o.colour} {o.shape}" for o in objects],
                "other": [f"a {o.colour} {shape}" for o, shape in zip(objects, others)]}
    scheduler, alphas = pipe.scheduler, pipe.scheduler.alphas_cumprod
    scheduler.set_timesteps(50)
    rows = []
    for t0 in t0s:
        drawn = {}
        for name, texts in captions.items():
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
            x = alphas[t0].sqrt() * x0 + (1 - alphas[t0]).sqrt() * noise  # (N, 3, S, S)
            with torch.no_grad():
                states = pipe.encode_prompt(texts)  # (N, L, D)
                for t in [t for t in scheduler.timesteps if t <= t0]:
                    x = scheduler.step(pipe.unet(x, t, encoder_hidden_states=states).sample, t, x).prev_sample
            images = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # (N, S, S, 3)
            drawn[name] = [classify_shape(colour_mask(im, o.colour), world.shapes) for im, o in zip(images, objects)]
        rows.append((t0, np.mean([d == o.shape for d, o in zip(drawn["true"], objects)]),
                     np.mean([d == o.shape for d, o in zip(drawn["other"], objects)]),
                     np.mean([d == shape for d, shape in zip(drawn["other"], others)])))
    return rows


if __name__ == "__main__":
    main()
