"""Evaluation sets of the shapes world, rendered on demand (deterministic, never committed).

`write_eval_set` renders scenes of the eval split (a seed stream disjoint from training) of the model's world
(`load_world`: the world its shapes_model.json names) into `<out>/images`, `<out>/masks` and a prompt-set JSONL
whose rows carry the image, the exact masks and the objects; the harness reads it like any other prompt set
(image mode scores the rendered images against the exact masks, generated mode generates from the captions).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image

from bench.shapes.world import caption, load_world, render, split_scene


def write_eval_set(out: str, n_scenes: int, model: str, first: int = 0, split: str = "eval") -> str:
    """Render scenes first..first+n_scenes-1 of `split` of `model`'s world once; returns the JSONL path."""
    world = load_world(model)
    folder = Path(out) / f"{split}_{first}_{n_scenes}_{world.size}px_{world.min_size}-{world.max_size}"
    jsonl = folder / "prompts.jsonl"
    if jsonl.exists():
        return str(jsonl)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    lines = []
    for index in range(first, first + n_scenes):
        scene = split_scene(split, index, world)
        image, masks = render(scene, world.size)
        text, words = caption(scene)
        sid = f"{split}{index:05d}"
        PIL.Image.fromarray(image).save(folder / "images" / f"{sid}.png")
        mask_files = {}
        for word in words:
            mask_files[word] = f"masks/{sid}__{word}.png"
            PIL.Image.fromarray(masks[word].astype(np.uint8) * 255).save(folder / mask_files[word])
        objects = [{"shape": o.shape, "colour": o.colour} for o in scene.objects]
        lines.append(json.dumps({"id": sid, "prompt": text, "words": words, "image": f"images/{sid}.png",
                                 "masks": mask_files, "objects": objects}))
    tmp = jsonl.with_name(f".prompts.jsonl.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, jsonl)  # the JSONL appears last, so a half-written set is never used
    return str(jsonl)
