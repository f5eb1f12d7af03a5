"""Generate + capture: the only expensive stage. One batched pass per group of (prompt, seed) samples.

Per sample it stores, through `bench.store.GenerateStore`, the target-token head maps summed over steps
(native resolution, fp16 by default, plus prompt, seed, words -> token slots) and the image; the
HeadIndex and the model's geometry once. Samples already stored (and checking) are skipped, so a killed
run resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch
from tqdm import tqdm

from bench.capture import HeadMapCapture
from bench.heads import HeadIndex
from bench.models import T2IModel
from bench.samples import Sample, sample_slots
from bench.store import GenerateStore, Geometry

STORE_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def check_source(samples: list[Sample], source: str) -> None:
    """`generated` draws images from the prompts; `image` needs an `image` file in every row."""
    if source not in ("generated", "image"):
        raise ValueError(f"capture.source must be 'generated' or 'image', got {source!r}")
    if source == "image":
        missing = sorted({s.row.id for s in samples if not Path(str(s.row.extra.get("image", ""))).is_file()})
        if missing:
            raise ValueError(f"capture.source=image needs an existing `image` file in every prompt row; "
                             f"{len(missing)} rows lack one (e.g. {missing[:3]}): use a dataset with images")


def run_batch(model: T2IModel, batch: list[Sample], source: str, steps: int,
              guidance_scale: float) -> list[PIL.Image.Image]:
    """Generated mode: one pipeline call. Image mode: one conditional pass per timestep on the given images."""
    prompts, seeds = [s.row.prompt for s in batch], [s.seed for s in batch]
    if source == "generated":
        return model.generate(prompts, seeds, steps, guidance_scale)
    images = [PIL.Image.open(s.row.extra["image"]).convert("RGB") for s in batch]
    model.image_passes(images, prompts, seeds, steps)
    return images


@dataclass
class CapturedBatch:
    images: list[PIL.Image.Image]
    slots: list[tuple[list[int], dict[str, list[int]]]]  # per sample: token positions, word -> slots
    maps: list[dict[tuple[int, int], torch.Tensor]]  # per sample, per resolution: (S, H_r, T, h, w) stored dtype
    extra_bytes: int  # what the capture held while running


def capture_batch(model: T2IModel, head_index: HeadIndex, batch: list[Sample], source: str, steps: int,
                  guidance_scale: float, store_dtype: str = "float16", step_buckets: int = 1,
                  capture_eot: bool = False, compile: bool | None = None) -> CapturedBatch:
    """One batch through the model inside a HeadMapCapture (`compile`: see HeadMapCapture); each sample's maps as
    they are stored."""
    slots = [sample_slots(s, len(model.tokenizer(s.row.prompt, truncation=True).input_ids) - 1
                          if capture_eot else None) for s in batch]
    with torch.inference_mode(), HeadMapCapture(model.unet, head_index, [t for t, _ in slots],
                                                n_steps=steps, step_buckets=step_buckets, compile=compile) as capture:
        images = run_batch(model, batch, source, steps, guidance_scale)
    with torch.profiler.record_function("capture.maps_to_storage"):
        maps = capture.maps()  # res -> (B, S, H_r, T_max, h, w) fp32
        stored = [{res: m[b, :, :, : len(tokens)].to("cpu", STORE_DTYPES[store_dtype]).contiguous()
                   for res, m in maps.items()} for b, (tokens, _) in enumerate(slots)]
    return CapturedBatch(images, slots, stored, capture.extra_bytes())


def generate_stage(model: T2IModel, samples: list[Sample], store: GenerateStore, steps: int, guidance_scale: float,
                   batch_size: int, store_dtype: str = "float16", step_buckets: int = 1,
                   source: str = "generated", capture_eot: bool = False) -> dict:
    """Generate (or take the given images) and capture every sample not yet in `store`; returns statistics."""
    check_source(samples, source)
    head_index = model.head_index()
    store.bind_head_index(head_index)
    store.save_geometry(Geometry(model.name, model.height, model.width, model.heatmap_size, model.daam_latent_hw))
    todo = [s for s in samples if not store.complete(s.id)]
    seconds, stored_bytes = 0.0, []
    for start in tqdm(range(0, len(todo), batch_size), desc="generate+capture", unit="batch", disable=not todo):
        batch = todo[start: start + batch_size]
        t0 = time.perf_counter()
        done = capture_batch(model, head_index, batch, source, steps, guidance_scale, store_dtype, step_buckets,
                             capture_eot)
        seconds += time.perf_counter() - t0
        for sample, image, (tokens, word_slots), per_res in zip(batch, done.images, done.slots, done.maps):
            stored_bytes.append(sum(t.numel() * t.element_size() for t in per_res.values()))
            store.save_sample(sample.id, {
                "id": sample.id, "prompt_id": sample.row.id, "prompt": sample.row.prompt, "seed": sample.seed,
                "tokens": tokens, "words": word_slots, "maps": per_res, "steps": steps,
                "guidance_scale": guidance_scale}, image)
    stats = {"generated": len(todo), "cached": len(samples) - len(todo), "seconds": round(seconds, 3)}
    if stored_bytes:
        stats["bytes_per_sample"] = int(sum(stored_bytes) / len(stored_bytes))
    return stats

