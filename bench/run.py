"""One harness run: prompts -> generate+capture -> pseudo-GT -> aggregate+score -> summary.

Every input is checked before the model generates anything; each stage reads the cache of the one
before it, so a sweep over methods, k or tau never regenerates images or re-segments them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bench import USER_ERRORS
from bench.cache import StageStore
from bench.evaluate import evaluate_stage
from bench.generate import generate_stage, make_samples, shard
from bench.prompts import load_prompt_set, prompt_set_hash, token_positions
from bench.report import summarise, write_summary
from bench.segment import segment_stage


def build(node: DictConfig):
    """hydra's instantiate, re-raising a user error from a target as itself (one line, no wrapper)."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, USER_ERRORS):
            raise err.__cause__ from None
        raise


def run(cfg: DictConfig, run_dir: Path) -> pd.DataFrame:
    """Run every stage for `cfg`, writing scores, summary and stats into `run_dir`; returns the summary."""
    t_start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = load_prompt_set(cfg.dataset.path, cfg.dataset.get("limit"))
    seeds = [int(s) for s in cfg.dataset.seeds]
    methods = [build(m) for m in cfg.method.methods.values()]
    relevance = build(cfg.relevance) if cfg.get("relevance") else None
    segmenter = build(cfg.segmenter)
    segmenter.check_available()
    model = build(cfg.model.loader)
    positions = token_positions(model.tokenizer, rows)  # fails on any missing word before generating
    samples = shard(make_samples(rows, seeds, positions), cfg.get("shard"))

    gen = cfg.model.generation
    gen_config = {"model": OmegaConf.to_container(cfg.model.loader), "generation": OmegaConf.to_container(gen),
                  "capture": OmegaConf.to_container(cfg.capture)}
    gen_store = StageStore(cfg.paths.cache, "generate", gen_config, [prompt_set_hash(rows)])
    gen_store.save_json("model.json", {"name": model.name, "height": model.height, "width": model.width,
                                       "heatmap_size": model.heatmap_size, "daam_latent_hw": model.daam_latent_hw})
    gen_stats = generate_stage(model, samples, gen_store, gen.steps, gen.guidance_scale, gen.batch_size,
                               cfg.capture.store_dtype, cfg.capture.step_buckets)

    seg_config = OmegaConf.to_container(cfg.segmenter)
    mask_store = StageStore(cfg.paths.cache, "segment", seg_config, [gen_store.key])
    seg_stats = segment_stage(segmenter, samples, gen_store, mask_store)

    table = evaluate_stage(samples, gen_store, mask_store, methods, relevance, cfg.eval.tau)
    table.to_csv(run_dir / "scores.csv", index=False)
    summary = summarise(table)
    header = [f"# {cfg.get('title', 'harness run')}", "",
              f"- model: {model.name}, {model.height}x{model.width}, {gen.steps} steps, CFG {gen.guidance_scale}",
              f"- prompts: {cfg.dataset.path} ({len(rows)} prompts x seeds {seeds})",
              f"- pseudo ground truth: {segmenter.name}",
              f"- relevance: {relevance.describe() if relevance else 'none'}",
              f"- binarisation: bicubic to image size, min-max, > tau = {cfg.eval.tau}",
              f"- cache: generate {gen_store.key}, segment {mask_store.key}"]
    if not segmenter.meaningful:
        header.insert(2, f"**These numbers only check the pipeline**: masks come from the `{segmenter.name}` "
                         "test segmenter, not from what the model drew.\n")
    print(write_summary(summary, run_dir, header))
    stats = {"generate": gen_stats, "segment": seg_stats, "wall_seconds": round(time.perf_counter() - t_start, 2)}
    (run_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    print(f"stats: {json.dumps(stats)}\nrun directory: {run_dir}")
    return summary
