"""Cost of the capture pass: plain generation vs generation with our capture vs generation under daam.trace.

`python -m bench.perf [hydra overrides] [--batch-sizes 1 4] [--steps N] [--runs N] ...` builds the model of
`conf/model/<name>.yaml` and, for the same prompts (the dataset's first rows), seed and steps, times
- `plain`: the pipeline call alone;
- `capture`: the pipeline call inside `HeadMapCapture` with the prompts' target tokens, then the per-sample maps
  moved to CPU in the storage dtype, exactly as `bench.generate.generate_stage` does it (without its disk writes);
- `daam`: the pipeline call under `daam.trace` (batch 1, its only mode), then its global heat map, the target words'
  maps and their move to CPU.
Every repetition runs every (mode, batch size) once, interleaved, so background load spreads over all of them;
figures are medians over the timed repetitions after the warm-up ones. It writes `<out>/perf_<tag>.json` and a
Markdown table beside it, with the floors the GPU setting must meet (SDXL at 1024 px).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bench import CONF_DIR, USER_ERRORS
from bench.capture import HeadMapCapture
from bench.generate import capture_batch
from bench.heads import HeadIndex
from bench.models import T2IModel
from bench.prompts import load_prompt_set, token_positions
from bench.provenance import device_info, versions
from bench.run import build
from bench.samples import Sample, make_samples

GB = 1e9
# (name, comparison, bound, what it is measured on); they are stated for SDXL at 1024 px on a GPU
FLOORS = (
    ("capture_overhead_pct", "<=", 5.0, "every batch size"),
    ("throughput_vs_daam", ">=", 1.5, "the largest batch size"),
    ("capture_extra_gb", "<=", 1.0, "batch size 4 (else the largest)"),
)


# --- the figures -----------------------------------------------------------------------------------------------
def overhead_pct(plain_s: float, capture_s: float) -> float:
    """Extra time of the capture in % of plain generation's time."""
    if plain_s <= 0:
        raise ValueError(f"plain generation time must be positive, got {plain_s}")
    return 100.0 * (capture_s - plain_s) / plain_s


def throughput_ratio(capture_s: float, batch_size: int, daam_s: float) -> float:
    """Images/s with capture (`batch_size` images in `capture_s`) over daam.trace's (one image in `daam_s`)."""
    if capture_s <= 0 or daam_s <= 0:
        raise ValueError(f"times must be positive, got capture {capture_s}, daam {daam_s}")
    return (batch_size / capture_s) * daam_s


def timing_record(mode: str, batch_size: int, steps: int, seconds: list[float], peaks: list[int | None],
                  info: dict) -> dict:
    """One (mode, batch size) row: median time over runs and the rates derived from it."""
    median = statistics.median(seconds)
    known = [p for p in peaks if p is not None]
    return {"mode": mode, "batch_size": batch_size, "runs": len(seconds), "seconds": [round(s, 4) for s in seconds],
            "median_s": round(median, 4), "images_per_s": round(batch_size / median, 4),
            "s_per_step": round(median / steps, 5), "peak_memory_bytes": max(known) if known else None, **info}


def compare(timings: list[dict]) -> list[dict]:
    """Per batch size: capture overhead, throughput vs daam, extra memory and bytes stored per sample."""
    by = {(t["mode"], t["batch_size"]): t for t in timings}
    daam = by.get(("daam", 1))
    rows = []
    for b in sorted({t["batch_size"] for t in timings if t["mode"] == "capture"}):
        plain, cap = by[("plain", b)], by[("capture", b)]
        delta = (cap["peak_memory_bytes"] - plain["peak_memory_bytes"]
                 if cap["peak_memory_bytes"] is not None and plain["peak_memory_bytes"] is not None else None)
        rows.append({
            "batch_size": b,
            "capture_overhead_pct": round(overhead_pct(plain["median_s"], cap["median_s"]), 2),
            "capture_overhead_paired_pct": round(statistics.median(
                overhead_pct(p, c) for p, c in zip(plain["seconds"], cap["seconds"])), 2),
            "throughput_vs_daam": round(throughput_ratio(cap["median_s"], b, daam["median_s"]), 3) if daam else None,
            "capture_extra_bytes": cap["extra_bytes"],
            "peak_memory_delta_bytes": delta,
            "capture_extra_gb": round(max(cap["extra_bytes"], delta or 0) / GB, 4),
            "bytes_per_sample": cap["bytes_per_sample"],
        })
    return rows


def check_floors(rows: list[dict], setting_matches: bool) -> list[dict]:
    """Each floor against its measured value; `applies` is False off the GPU / 1024 px setting."""
    if not rows:
        return []
    largest = rows[-1]
    at4 = next((r for r in rows if r["batch_size"] == 4), largest)
    picks = {"capture_overhead_pct": rows, "throughput_vs_daam": [largest], "capture_extra_gb": [at4]}
    out = []
    for name, op, bound, where in FLOORS:
        for row in picks[name]:
            value = row[name]
            met = None if value is None else (value <= bound if op == "<=" else value >= bound)
            out.append({"name": name, "batch_size": row["batch_size"], "op": op, "floor": bound, "measured": value,
                        "met": met, "applies": setting_matches, "measured_on": where})
    return out


# --- the three modes ---------------------------------------------------------------------------------------------
def run_plain(model: T2IModel, batch: list[Sample], steps: int, guidance: float) -> dict:
    with torch.inference_mode():
        model.generate([s.row.prompt for s in batch], [s.seed for s in batch], steps, guidance)
    return {}


def run_capture(model: T2IModel, head_index: HeadIndex, batch: list[Sample], steps: int, guidance: float,
                store_dtype: str, step_buckets: int, compile: bool | None = None) -> dict:
    done = capture_batch(model, head_index, batch, "generated", steps, guidance, store_dtype, step_buckets,
                         compile=compile)
    extra, stored = done.extra_bytes, done.maps
    per_sample = [sum(t.numel() * t.element_size() for t in maps.values()) for maps in stored]
    return {"extra_bytes": extra, "bytes_per_sample": int(statistics.mean(per_sample))}


def run_daam(model: T2IModel, sample: Sample, steps: int, guidance: float) -> dict:
    """daam.trace around one generation, then its global map and the target words' maps, moved to CPU."""
    import daam

    with torch.inference_mode(), daam.trace(model.pipe) as tc:
        model.generate([sample.row.prompt], [sample.seed], steps, guidance)
        held = sum(t.numel() * t.element_size() for _, t in tc.all_heat_maps if torch.is_tensor(t))
        global_map = tc.compute_global_heat_map()
        words = [global_map.compute_word_heat_map(w).heatmap.to("cpu", torch.float16) for w in sample.positions]
    stored = global_map.heat_maps.to("cpu", torch.float16)
    return {"extra_bytes": held, "bytes_per_sample": stored.numel() * 2 + sum(w.numel() * 2 for w in words)}


def _timed(fn, device: torch.device) -> tuple[float, int | None, dict]:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    info = fn()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, torch.cuda.max_memory_allocated(device) if cuda else None, info


def measure(model: T2IModel, samples: list[Sample], batch_sizes: list[int], steps: int, guidance: float,
            runs: int, warmup: int, store_dtype: str = "float16", step_buckets: int = 1,
            with_daam: bool = True, compile: bool | None = None) -> list[dict]:
    """Median timings of every (mode, batch size); daam runs at batch 1 only (its only mode)."""
    head_index = model.head_index()
    runners = {
        "plain": lambda b: run_plain(model, samples[:b], steps, guidance),
        "capture": lambda b: run_capture(model, head_index, samples[:b], steps, guidance, store_dtype, step_buckets,
                                         compile),
        "daam": lambda b: run_daam(model, samples[0], steps, guidance),
    }
    jobs = [(mode, b) for b in batch_sizes for mode in ("plain", "capture")] + ([("daam", 1)] if with_daam else [])
    seen: dict[tuple[str, int], dict] = {job: {"seconds": [], "peaks": [], "info": {}} for job in jobs}
    for rep in tqdm(range(warmup + runs), desc="perf repetitions", unit="rep"):
        for mode, b in jobs:
            seconds, peak, info = _timed(functools.partial(runners[mode], b), model.device)
            if rep >= warmup:
                seen[(mode, b)]["seconds"].append(seconds)
                seen[(mode, b)]["peaks"].append(peak)
                seen[(mode, b)]["info"] = info
    return [timing_record(mode, b, steps, s["seconds"], s["peaks"], s["info"]) for (mode, b), s in seen.items()]


# --- profile ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _labelled_capture_calls():
    """Label every HeadMapCapture._record call in profiler traces (restored on exit)."""
    original = HeadMapCapture._record

    def labelled(self, key, attn):
        with torch.profiler.record_function("HeadMapCapture._record"):
            original(self, key, attn)

    HeadMapCapture._record = labelled
    try:
        yield
    finally:
        HeadMapCapture._record = original


def _ms(event, attr: str) -> float:
    return round(getattr(event, attr, 0.0) / 1000.0, 3)


def _ops_inside(events, label: str, top: int) -> list[dict]:
    """Self time of the ops run under every `label` range, summed by op name, largest first."""
    totals: dict[str, list[float]] = {}
    for event in events:
        parent = event.cpu_parent
        while parent is not None and parent.name != label:
            parent = parent.cpu_parent
        if parent is not None:
            acc = totals.setdefault(event.name, [0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += event.self_cpu_time_total
            acc[2] += getattr(event, "self_device_time_total", 0.0)
    ranked = sorted(totals.items(), key=lambda kv: max(kv[1][1], kv[1][2]), reverse=True)[:top]
    return [{"op": name, "calls": n, "self_cpu_ms": round(cpu / 1000.0, 3), "self_device_ms": round(dev / 1000.0, 3)}
            for name, (n, cpu, dev) in ranked]


def profile(model: T2IModel, samples: list[Sample], batch_size: int, steps: int, guidance: float,
            store_dtype: str = "float16", step_buckets: int = 1, top: int = 8, compile: bool | None = None) -> dict:
    """torch.profiler over one plain and one capture generation: where the capture's extra time goes."""
    head_index = model.head_index()
    cuda = model.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    batch = samples[:batch_size]
    out: dict = {"batch_size": batch_size, "steps": steps}
    for mode in ("plain", "capture"):
        with _labelled_capture_calls(), torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            if mode == "plain":
                run_plain(model, batch, steps, guidance)
            else:
                capture_batch(model, head_index, batch, "generated", steps, guidance, store_dtype, step_buckets,
                              compile=compile)
            if cuda:
                torch.cuda.synchronize(model.device)
            wall = time.perf_counter() - start
        events = prof.key_averages()
        by_name = {e.key: e for e in events}
        sort_key = "self_device_time_total" if cuda else "self_cpu_time_total"
        ranked = sorted(events, key=lambda e: getattr(e, sort_key, 0.0), reverse=True)[:top]
        entry = {"wall_s": round(wall, 4),
                 "top_ops": [{"op": e.key, "calls": e.count, "self_cpu_ms": _ms(e, "self_cpu_time_total"),
                              **({"self_device_ms": _ms(e, "self_device_time_total")} if cuda else {})}
                             for e in ranked],
                 "stream_syncs": by_name["cudaStreamSynchronize"].count if "cudaStreamSynchronize" in by_name else 0}
        if mode == "capture":
            for label in ("HeadMapCapture._record", "capture.maps_to_storage"):
                ev = by_name.get(label)
                entry[label] = {"calls": ev.count if ev else 0, "cpu_ms": _ms(ev, "cpu_time_total") if ev else 0.0,
                                **({"device_ms": _ms(ev, "device_time_total") if ev else 0.0} if cuda else {})}
            entry["ops_inside_record"] = _ops_inside(prof.events(), "HeadMapCapture._record", top)
            record_ms = entry["HeadMapCapture._record"]["cpu_ms"] + entry["capture.maps_to_storage"]["cpu_ms"]
            entry["capture_cpu_share_pct"] = round(100.0 * record_ms / 1000.0 / wall, 2)
        out[mode] = entry
    return out


# --- environment and report ------------------------------------------------------------------------------------
def default_tag(device: dict) -> str:
    return "cpu" if device["type"] == "cpu" else re.sub(r"[^a-z0-9]+", "_", device["name"].lower()).strip("_")


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def to_markdown(result: dict) -> str:
    dev, ver = result["device"], result["versions"]
    threads = f", {dev['threads']} thread(s) of {dev['cpu_count']} cores" if dev["type"] == "cpu" else ""
    lines = [f"# Capture performance: {result['model']} on {dev['name']}", "",
             f"- device: {dev['type']} ({dev['name']}){threads}; dtype {result['dtype']}; "
             f"{result['resolution'][0]}x{result['resolution'][1]} px; {result['steps']} steps; "
             f"CFG {result['guidance_scale']}; {result['n_heads']} heads",
             f"- median of {result['runs']} runs after {result['warmup']} warm-up run(s), modes interleaved; "
             f"daam.trace runs at batch 1 (its only mode); s/step = whole pipeline call / steps",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if v),
             f"- command: `{result['command']}`", "",
             "| mode | batch | median s | images/s | s/step | peak accel. memory | extra held | stored/sample |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t in result["timings"]:
        lines.append(f"| {t['mode']} | {t['batch_size']} | {t['median_s']:.3f} | {t['images_per_s']:.3f} | "
                     f"{t['s_per_step']:.4f} | {_mb(t['peak_memory_bytes'])} | {_mb(t.get('extra_bytes'))} | "
                     f"{_mb(t.get('bytes_per_sample'))} |")
    lines += ["", "| batch | capture overhead (medians) | paired per run | throughput vs daam | capture state | "
                  "peak-memory delta | stored/sample |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["comparison"]:
        ratio = "n/a" if r["throughput_vs_daam"] is None else f"{r['throughput_vs_daam']:.2f}x"
        lines.append(f"| {r['batch_size']} | {r['capture_overhead_pct']:+.1f}% | "
                     f"{r['capture_overhead_paired_pct']:+.1f}% | {ratio} | "
                     f"{_mb(r['capture_extra_bytes'])} | {_mb(r['peak_memory_delta_bytes'])} | "
                     f"{_mb(r['bytes_per_sample'])} |")
    lines += ["", "Floors (stated for SDXL at 1024 px on a GPU):", "",
              "| floor | batch | measured | met | applies to this setting |", "| --- | ---: | ---: | --- | --- |"]
    for f in result["floors"]:
        met = "n/a" if f["met"] is None else ("yes" if f["met"] else "**no**")
        lines.append(f"| {f['name']} {f['op']} {f['floor']} | {f['batch_size']} | {f['measured']} | {met} | "
                     f"{'yes' if f['applies'] else 'no'} |")
    prof = result.get("profile")
    if prof:
        cap = prof["capture"]
        rec, post = cap["HeadMapCapture._record"], cap["capture.maps_to_storage"]
        lines += ["", f"Profile (torch.profiler, batch {prof['batch_size']}, {prof['steps']} steps): plain "
                      f"{prof['plain']['wall_s']:.3f} s, capture {cap['wall_s']:.3f} s; "
                      f"`HeadMapCapture._record` {rec['calls']} calls, {rec['cpu_ms']:.1f} ms CPU"
                      + (f", {rec['device_ms']:.1f} ms device" if "device_ms" in rec else "")
                      + f"; maps to storage {post['cpu_ms']:.1f} ms; capture share of the profiled call "
                      f"{cap['capture_cpu_share_pct']:.1f}%; stream syncs plain {prof['plain']['stream_syncs']}, "
                      f"capture {cap['stream_syncs']}.", "",
                  "| top ops in the capture call | calls | self CPU ms |", "| --- | ---: | ---: |"]
        lines += [f"| `{op['op']}` | {op['calls']} | {op['self_cpu_ms']:.1f} |" for op in cap["top_ops"]]
        lines += ["", "| ops inside `HeadMapCapture._record` | calls | self CPU ms | self device ms |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| `{op['op']}` | {op['calls']} | {op['self_cpu_ms']:.1f} | {op['self_device_ms']:.1f} |"
                  for op in cap["ops_inside_record"]]
    lines += [""] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def write_report(result: dict, out_dir: Path, tag: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"perf_{tag}.json", out_dir / f"perf_{tag}.md"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(to_markdown(result))
    return json_path, md_path


# --- entry point -----------------------------------------------------------------------------------------------
def compose_config(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=sdxl_random dataset=coco80")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--steps", type=int, nargs="+", default=None,
                   help="default: the model config's generation.steps; several: one report each, "
                        "perf_<tag>_<N>steps.json, from one model build")
    p.add_argument("--runs-at", type=str, nargs="*", default=[], metavar="STEPS:RUNS",
                   help="fewer timed runs at some step counts, e.g. 50:2 (the warm-up runs only before the first)")
    p.add_argument("--daam-steps", type=int, nargs="*", default=None,
                   help="step counts that also time daam.trace (default: all)")
    p.add_argument("--capture-compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile of the capture's per-call kernel (auto: on CUDA with Triton)")
    p.add_argument("--runs", type=int, default=3, help="timed repetitions (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-daam", action="store_true", help="skip the daam.trace reference")
    p.add_argument("--profile", action="store_true", help="add a torch.profiler breakdown of one capture call")
    p.add_argument("--profile-steps", type=int, default=5, help="steps of the profiled calls (at most --steps)")
    p.add_argument("--out", type=Path, default=Path("results/reference"))
    p.add_argument("--tag", default=None, help="file name perf_<tag>.json (default: cpu or the GPU's name)")
    p.add_argument("--note", action="append", default=[], help="a line for the report (e.g. what else ran)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Measure and write one report per step count; returns the last report."""
    args = parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or min(args.batch_sizes) < 1:
        raise ValueError("need --runs >= 1, --warmup >= 0 and batch sizes >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_config(args.overrides)
    step_counts = args.steps or [int(cfg.model.generation.steps)]
    runs_at = {int(k): int(v) for k, v in (item.split(":") for item in args.runs_at)}
    compile = {"auto": None, "on": True, "off": False}[args.capture_compile]
    rows = load_prompt_set(cfg.dataset.path)
    n = max(args.batch_sizes)
    if len(rows) < n:
        raise ValueError(f"{cfg.dataset.path} has {len(rows)} prompts; batch size {n} needs as many")
    if not args.no_daam:
        import daam  # noqa: F401  (fail before building the model if it is missing)

    load_before = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    model = build(cfg.model.loader)
    build_s = time.perf_counter() - t0
    seed = int(cfg.dataset.seeds[0])
    samples = make_samples(rows[:n], [seed], token_positions(model.tokenizer, rows[:n]))
    result = {}
    for i, steps in enumerate(step_counts):
        with_daam = not args.no_daam and (args.daam_steps is None or steps in args.daam_steps)
        runs, warmup = runs_at.get(steps, args.runs), args.warmup if i == 0 else 0
        result = measure_once(args, cfg, model, samples, steps, runs, warmup, with_daam, compile, build_s,
                              load_before, profile_this=args.profile and i == 0, argv=argv)
        tag = args.tag or default_tag(result["device"])
        json_path, md_path = write_report(result, args.out, f"{tag}_{steps}steps" if len(step_counts) > 1 else tag)
        print(to_markdown(result))
        print(f"wrote {json_path} and {md_path}")
    return result


def measure_once(args: argparse.Namespace, cfg: DictConfig, model: T2IModel, samples: list[Sample], steps: int,
                 runs: int, warmup: int, with_daam: bool, compile: bool | None, build_s: float, load_before: float,
                 profile_this: bool, argv: list[str] | None) -> dict:
    """One report: timings, comparison, floors and (optionally) the profile at `steps`."""
    guidance = float(cfg.model.generation.guidance_scale)
    timings = measure(model, samples, args.batch_sizes, steps, guidance, runs, warmup,
                      cfg.capture.store_dtype, cfg.capture.step_buckets, with_daam=with_daam, compile=compile)
    rows_cmp = compare(timings)
    device = {**device_info(model.device), "load_average_1min_before": load_before}
    setting = device["type"] == "cuda" and min(model.height, model.width) >= 1024
    notes = args.note + [f"model built in {build_s:.1f} s",
             "capture = bench.generate's path (HeadMapCapture with the target tokens, maps summed over steps, "
             f"moved to CPU as {cfg.capture.store_dtype}), without writing files; per-call kernel compiled: "
             f"{args.capture_compile}",
             "daam = daam.trace around the same pipeline call + compute_global_heat_map + the target words' maps "
             "to CPU; its 'extra held' is the per-head maps of all 77 tokens it accumulates",
             "capture state = HeadMapCapture.extra_bytes (its accumulators); capture_extra_gb = the larger of that "
             "and the peak-memory delta"]
    if warmup == 0:
        notes.append("no warm-up runs here: an earlier step count in the same process warmed up")
    if device["type"] == "cpu":
        notes.append("CPU: no accelerator memory to read (peak memory n/a); times vary with other load on the "
                     "machine (load average in `device`), hence interleaved modes, medians and the paired overhead "
                     "(median over runs of each run's capture vs plain time)")
    return {
        "benchmark": "capture overhead and throughput vs plain generation and daam.trace",
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m bench.perf " + shlex.join(sys.argv[1:] if argv is None else argv),
        "device": device, "model": model.name, "dtype": str(model.dtype).removeprefix("torch."),
        "resolution": [model.height, model.width], "n_heads": len(model.head_index()), "steps": steps,
        "guidance_scale": guidance, "batch_sizes": args.batch_sizes, "runs": runs, "warmup": warmup,
        "store_dtype": cfg.capture.store_dtype, "step_buckets": cfg.capture.step_buckets,
        "capture_compile": args.capture_compile,
        "prompts": [s.row.prompt for s in samples], "words": [list(s.positions) for s in samples],
        "seed": samples[0].seed, "versions": versions(), "model_config": OmegaConf.to_container(cfg.model.loader),
        "timings": timings, "comparison": rows_cmp, "floors": check_floors(rows_cmp, setting),
        "profile": profile(model, samples, max(args.batch_sizes), min(steps, args.profile_steps), guidance,
                           cfg.capture.store_dtype, cfg.capture.step_buckets, compile=compile)
        if profile_this else None,
        "notes": notes,
    }


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as err:
        raise SystemExit(f"error: {err}") from None
