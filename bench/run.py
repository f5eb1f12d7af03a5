"""One harness run: prompts -> generate+capture -> pseudo-GT -> aggregate+score -> summary.

Every input is checked before the model generates anything: all that does not need the model, and (for the
loaders `bench.models.head_index_from_config` knows) head groups and relevance files against its heads, before
it loads; the words' token positions right after. Each stage reads the cache of the one before it, so a sweep
over methods, k or tau never regenerates images or re-segments them.
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
from bench.analyses import Analysis
from bench.checks import check_seeds, preflight
from bench.evaluate import KCurve, Overlays, Selective, evaluate_stage
from bench.figures import OVERLAYS, save_overlays, write_figures
from bench.generate import generate_stage
from bench.heads import HeadIndex
from bench.models import head_index_from_config
from bench.prompts import load_prompt_set, mask_files_hash, prompt_set_hash, token_positions
from bench.provenance import REPO, describe, provenance
from bench.report import summarise, summary_header, write_summary, write_verdict
from bench.samples import make_samples, shard
from bench.segment import FileMaskSegmenter, segment_stage
from bench.store import GenerateStore, MaskStore, write_table


def build(node: DictConfig):
    """hydra's instantiate, re-raising a user error from a target as itself (one line, no wrapper)."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, USER_ERRORS):
            raise err.__cause__ from None
        raise


def build_analysis(key: str, node: DictConfig) -> Analysis:
    """The `analyses.<key>` entry, refused in one line unless it builds a `bench.analyses.Analysis`."""
    analysis = build(node)
    if not isinstance(analysis, Analysis):
        raise ValueError(f"analyses.{key}: {node.get('_target_')} is not a bench.analyses.Analysis: "
                         "point _target_ at a subclass or remove the entry")
    return analysis


def run(cfg: DictConfig, run_dir: Path, job: bool = False) -> pd.DataFrame:
    """Run every stage for `cfg`, writing scores, summary, figures and stats into `run_dir`; returns the
    summary. The logger (cfg.logger) records the config first and is finished even when a stage fails."""
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = build(cfg.logger)
    with logger.session(cfg, run_dir):
        return _run(cfg, run_dir, logger, job)


def _run(cfg: DictConfig, run_dir: Path, logger, job: bool) -> pd.DataFrame:
    t_start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    # every value that does not need the model, before it loads (the CLI ran `preflight` before importing torch)
    preflight(cfg)
    dataset_path = build(cfg.dataset.build) if cfg.dataset.get("build") else cfg.dataset.path
    rows = load_prompt_set(dataset_path, cfg.dataset.get("limit"))
    seeds = check_seeds(cfg.dataset.seeds)
    methods, relevance, configured = build_and_check_heads(cfg)
    analyses = [build_analysis(key, node) for key, node in (cfg.get("analyses") or {}).items()]
    segmenter = build(cfg.segmenter)
    segmenter.check_available()
    words = sorted({w for row in rows for w in row.words})
    own = own_relevance(methods)
    sources = [r for r in (relevance, *own.values()) if r is not None]
    for source in sources:
        source.check_words(words)  # e.g. a word without a concept
    for analysis in analyses:
        analysis.check(relevance, rows)
    rows_key = prompt_set_hash(rows)  # image files by content
    masks_key = mask_files_hash(rows) if isinstance(segmenter, FileMaskSegmenter) else None

    # what needs the loaded model (its tokenizer; the heads of a loader not known above), before generating
    model = build(cfg.model.loader)
    positions = token_positions(model.tokenizer, rows)  # fails on any missing word
    head_index = model.head_index()
    if configured is None:
        check_heads(methods, sources, head_index)
    elif configured != head_index:
        raise RuntimeError(f"{model.name}: the loaded UNet's heads differ from its configuration's")
    samples = shard(make_samples(rows, seeds, positions), cfg.get("shard"))
    if not samples:
        raise ValueError(f"shard={cfg.shard} leaves no sample of {len(rows)} prompts: use fewer shards")

    gen = cfg.model.generation
    gen_config = {"model": OmegaConf.to_container(cfg.model.loader), "generation": OmegaConf.to_container(gen),
                  "capture": OmegaConf.to_container(cfg.capture), "weights": model.fingerprint}
    gen_store = GenerateStore(cfg.paths.cache, gen_config, [rows_key])
    gen_stats = generate_stage(model, samples, gen_store, gen.steps, gen.guidance_scale, gen.batch_size,
                               cfg.capture.store_dtype, cfg.capture.step_buckets, cfg.capture.source,
                               cfg.capture.eot)
    model_key = {**gen_config["model"], "weights": model.fingerprint}
    relevance_stats = {s.name: s.prepare(model, cfg.paths.cache, model_key, words) for s in sources}

    seg_config = OmegaConf.to_container(cfg.segmenter)
    mask_store = MaskStore(cfg.paths.cache, seg_config, [gen_store.key, masks_key])
    seg_stats = segment_stage(segmenter, samples, gen_store, mask_store)

    overlays = Overlays(samples)
    table = evaluate_stage(samples, gen_store, mask_store, methods, relevance, cfg.eval.tau, cfg.eval.workers,
                           overlays)
    write_table(table, run_dir)
    summary = summarise(table)
    labels = {m.name: (m.relevance or relevance).label() for m in methods
              if isinstance(m, Selective) and (m.relevance or relevance) is not None}
    summary.insert(2, "relevance", summary["method"].map(labels).fillna(""))
    prov = provenance(model.device, model.dtype)
    title = cfg.get("title") or f"{model.name} on {Path(dataset_path).stem}, pseudo ground truth {segmenter.name}"
    images = {"generated": "generated images", "image": "given images"}[cfg.capture.source]
    facts = {"model": f"{model.name}, {model.height}x{model.width}, {gen.steps} steps, CFG {gen.guidance_scale}",
             "prompts": f"{repo_relative(dataset_path)} ({len(rows)} prompts x seeds {seeds}, {images})",
             "pseudo ground truth": segmenter.name,
             "relevance": relevance.describe() if relevance else "none",
             **{f"relevance of {name}": source.describe() for name, source in own.items()},
             "binarisation": f"bicubic to image size, min-max, > tau = {cfg.eval.tau}",
             **{m.name: f"every k; masks compared on the {m.size}x{m.size} grid (reference area-downsampled), not "
                        "at image size" for m in methods if isinstance(m, KCurve) and m.size},
             "cache": f"generate {gen_store.key}, segment {mask_store.key}",
             "provenance": describe(prov)}
    notice = (f"These numbers only check the pipeline: masks come from the `{segmenter.name}` test segmenter, "
              "not from what the model drew." if not segmenter.meaningful else "")
    header = summary_header(title, facts, notice)
    write_summary(summary, run_dir, header)
    (run_dir / "header.json").write_text(json.dumps(header, indent=1))
    shown = {"items": overlays.items()}
    save_overlays(shown, run_dir / OVERLAYS)
    figures = write_figures(summary, run_dir, overlays=shown) if cfg.report.figures else []
    for analysis in analyses:  # a sweep's job prints each analysis's first line; its files hold the rest
        text = analysis(samples, gen_store, mask_store, relevance, cfg.eval.tau, run_dir)
        print(text.splitlines()[0] + f" (in full: {run_dir})" if job and text.count("\n") else text)
    stats = {"generate": gen_stats, "segment": seg_stats, "relevance": relevance_stats,
             "wall_seconds": round(time.perf_counter() - t_start, 2), "provenance": prov}
    (run_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    logger.log_results(run_dir, table, summary, figures, shown, prov)
    gen, seg = stats["generate"], stats["segment"]
    print(f"stages: generated {gen.get('generated', 0)} (cached {gen.get('cached', 0)}), segmented "
          f"{seg.get('segmented', 0)} (cached {seg.get('cached', 0)}), {stats['wall_seconds']} s; every row in "
          f"{run_dir / 'summary.md'}")
    verdict = write_verdict(summary, run_dir, title, note=notice, collect=not job)  # the notice ends it
    if not job:  # a sweep's verdict comes from its merge (bench.sweep), after every job
        print(verdict, end="")
    return summary


def own_relevance(methods: list) -> dict:
    """Method name -> the relevance source a selective method brings itself (not the run's)."""
    return {m.name: m.relevance for m in methods if isinstance(m, Selective) and m.relevance is not None}


def build_and_check_heads(cfg: DictConfig) -> tuple[list, object | None, HeadIndex | None]:
    """The methods and relevance source of `cfg`, their head-dependent values (k, blocks, resolutions, a relevance
    file's heads) checked against the heads the model's configuration describes, without loading weights
    (`head_index_from_config`); that HeadIndex, or None for a loader that does not describe its heads (checked once
    it loads). A sweep runs this for every job before the first starts (`bench.sweep.check_jobs`)."""
    methods = [build(m) for m in cfg.method.methods.values()]
    relevance = build(cfg.relevance) if cfg.get("relevance") else None
    configured = head_index_from_config(cfg.model.loader)
    if configured is not None:
        sources = [r for r in (relevance, *own_relevance(methods).values()) if r is not None]
        check_heads(methods, sources, configured)
    return methods, relevance, configured


def check_heads(methods: list, sources: list, head_index: HeadIndex) -> None:
    """Values that depend on the model's heads: k, blocks and resolutions of each selective method, and each
    relevance source's heads (a relevance file of another model), each a one-line error."""
    for method in methods:
        if isinstance(method, Selective):
            method.check(head_index)
    for source in sources:
        source.check_heads(head_index)


def repo_relative(path: str | Path) -> str:
    """`path` relative to the repository when it lies inside it, so headers name no machine's folders."""
    full = Path(path).resolve()
    return str(full.relative_to(REPO)) if full.is_relative_to(REPO) else str(path)
