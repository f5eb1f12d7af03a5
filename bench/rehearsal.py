"""GPU dress rehearsal of the paper pipeline (`make gpu-check` = scripts/gpu_check.sh): phases and their report.

`python -m bench.rehearsal pipeline --work DIR [hydra overrides]` runs one harness run in this process and writes
`DIR/phase_pipeline.json`: per-stage seconds, peak accelerator memory, bytes stored per sample and per stage.
`python -m bench.rehearsal phase --work DIR --name NAME --status ok --seconds S [--log FILE]` records a phase the
shell ran (setup, tests, perf, ...). `python -m bench.rehearsal report --work DIR --out OUT --card NAME` merges
every phase recorded so far, the perf files in OUT and the projection of `make bench EXP=paper_sdxl_sweep` into
`OUT/gpu_rehearsal_<card>.json` and `.md`; the script calls it after every phase, so a phase that fails or runs
out of time leaves the others' results in place. Heavy imports happen inside the commands that need them, so
recording a phase costs no time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

# `make bench EXP=paper_sdxl_sweep`: COCO-80 x 3 seeds at 50 steps, 3 relevance sources x 4 head groups = 12 jobs
SWEEP = {"prompts": 300, "seeds": 3, "steps": 50, "jobs": 12}
PHASES = ("setup", "gpu_tests", "perf", "pipeline", "hrv_start_token_share")


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run_pipeline(overrides: list[str], work: Path) -> dict:
    """One `python -m bench` run in-process: its stats plus peak accelerator memory and bytes stored."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    import bench.run
    from bench import CONF_DIR

    cache = work / "cache"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"paths.cache={cache}", f"paths.runs={work / 'runs'}"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    cuda = torch.cuda.is_available() and str(cfg.model.loader.get("device", "auto")) in ("auto", "cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    built, original_build = [0.0], bench.run.build

    def timed_build(node):  # bench.run builds the model, methods and segmenter (which loads lazily) through this
        t = time.perf_counter()
        try:
            return original_build(node)
        finally:
            built[0] += time.perf_counter() - t

    bench.run.build = timed_build
    t0 = time.perf_counter()
    try:
        bench.run.run(cfg, work / "run")
    finally:
        bench.run.build = original_build
    wall = time.perf_counter() - t0
    stats = json.loads((work / "run" / "stats.json").read_text())
    gen, seg = stats["generate"], stats["segment"]
    n_images = gen["generated"] + gen["cached"]
    stages = {"build": round(built[0], 3), "generate_capture": gen.get("seconds", 0.0),
              "segment": seg.get("seconds", 0.0)}  # segment: the segmenter's lazy model build included
    stages["evaluate_report"] = round(wall - sum(stages.values()), 3)  # scoring, summary, overlays
    stored = {stage: _dir_bytes(cache / stage) for stage in ("generate", "segment")}
    return {"overrides": overrides, "images": n_images, "steps": int(cfg.model.generation.steps),
            "batch_size": int(cfg.model.generation.batch_size), "segmenter": str(cfg.segmenter._target_),
            "wall_s": round(wall, 3), "stage_seconds": stages,
            "seconds_per_image": {k: round(v / n_images, 4) for k, v in stages.items()},
            "segment_seconds_per_image": seg.get("seconds_per_image"),
            "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "maps_bytes_per_sample": gen.get("bytes_per_sample"), "stored_bytes": stored,
            "stored_bytes_per_image": {k: v // n_images for k, v in stored.items()},
            "run_outputs_bytes": _dir_bytes(work / "run")}


def project_sweep(pipeline: dict, perf50: dict | None) -> dict:
    """Wall time and disk of `make bench EXP=paper_sdxl_sweep` from the rehearsal's rates.

    generate+capture: perf's capture time at batch 4 and 50 steps per image where measured, else the pipeline's
    per-image rate scaled by steps; segment: the pipeline's per image (its model build included, so an upper
    bound); evaluate and report: the pipeline's per image, once per job; model builds: once per job."""
    images = SWEEP["prompts"] * SWEEP["seeds"]
    per_image = pipeline["seconds_per_image"]
    capture4 = next((t for t in (perf50 or {}).get("timings", []) if t["mode"] == "capture" and t["batch_size"] == 4),
                    None)
    if capture4:
        gen_s, gen_from = capture4["median_s"] / 4, "perf: capture at batch 4, 50 steps (no file writes)"
    else:
        gen_s = per_image["generate_capture"] * SWEEP["steps"] / pipeline["steps"]
        gen_from = f"pipeline at {pipeline['steps']} steps, scaled to {SWEEP['steps']}"
    seconds = {"generate_capture": images * gen_s, "segment": images * per_image["segment"],
               "evaluate_report": SWEEP["jobs"] * images * per_image["evaluate_report"],
               "build": SWEEP["jobs"] * pipeline["stage_seconds"]["build"]}
    stored = pipeline["stored_bytes_per_image"]
    disk = {"generate": images * stored["generate"], "segment": images * stored["segment"],
            "run_outputs": SWEEP["jobs"] * images * pipeline["run_outputs_bytes"] // pipeline["images"]}
    return {"setting": {**SWEEP, "images": images}, "generate_rate_from": gen_from,
            "seconds": {k: round(v) for k, v in seconds.items()}, "total_hours": round(sum(seconds.values()) / 3600, 2),
            "disk_bytes": disk, "total_gb": round(sum(disk.values()) / 1e9, 2)}


def record_phase(work: Path, name: str, status: str, seconds: float, log: Path | None = None, **extra) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    tail = log.read_text(errors="replace").splitlines()[-15:] if log and log.exists() else []
    path = work / f"phase_{name}.json"
    path.write_text(json.dumps({"name": name, "status": status, "seconds": round(seconds, 1), "log_tail": tail,
                                **extra}, indent=1) + "\n")
    return path


def report(work: Path, out: Path, card: str, budget_s: float | None = None) -> dict:
    import torch

    from bench.perf import device_info, versions

    phases = {}
    for name in PHASES:
        path = work / f"phase_{name}.json"
        phases[name] = json.loads(path.read_text()) if path.exists() else {"name": name, "status": "not run"}
    perf = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob(f"perf_{card}_*steps.json"))}
    perf50 = next((r for r in perf.values() if r["steps"] == SWEEP["steps"]), None)
    pipeline = phases["pipeline"].get("result")
    result = {"benchmark": "GPU dress rehearsal of the paper pipeline", "card": card,
              "created": datetime.datetime.now().isoformat(timespec="seconds"),
              "device": device_info(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
              "versions": versions(), "budget_s": budget_s,
              "total_s": round(sum(p.get("seconds", 0.0) for p in phases.values()), 1), "phases": phases,
              "perf": {name: {"steps": r["steps"], "comparison": r["comparison"]} for name, r in perf.items()},
              "stage_seconds": pipeline["stage_seconds"] if pipeline else None,  # the pipeline's, for checkers
              "projection": project_sweep(pipeline, perf50) if pipeline else None}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu_rehearsal_{card}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"gpu_rehearsal_{card}.md").write_text(to_markdown(result))
    return result


def _gb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e9:.2f} GB"


def to_markdown(result: dict) -> str:
    dev = result["device"]
    lines = [f"# GPU dress rehearsal on {dev['name']} ({result['card']})", "",
             f"- created {result['created']}; phases took {result['total_s']} s in all"
             + (f" (budget {result['budget_s']:.0f} s)" if result["budget_s"] else ""),
             "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v), "",
             "| phase | status | seconds |", "| --- | --- | ---: |"]
    lines += [f"| {p['name']} | {p['status']} | {p.get('seconds', '')} |" for p in result["phases"].values()]
    if result["perf"]:
        lines += ["", "| perf | steps | batch | capture overhead | paired | throughput vs daam |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, r in result["perf"].items():
            for row in r["comparison"]:
                ratio = "n/a" if row["throughput_vs_daam"] is None else f"{row['throughput_vs_daam']:.2f}x"
                lines.append(f"| {name} | {r['steps']} | {row['batch_size']} | {row['capture_overhead_pct']:+.1f}% | "
                             f"{row['capture_overhead_paired_pct']:+.1f}% | {ratio} |")
    pipe = result["phases"]["pipeline"].get("result")
    if pipe:
        lines += ["", f"Pipeline: {pipe['images']} images, {pipe['steps']} steps, batch {pipe['batch_size']}, "
                      f"segmenter {pipe['segmenter']}; wall {pipe['wall_s']:.1f} s; peak accelerator memory "
                      f"{_gb(pipe['peak_memory_bytes'])}; maps {pipe['maps_bytes_per_sample']} bytes per sample.", "",
                  "| stage | seconds | per image | stored per image |", "| --- | ---: | ---: | ---: |"]
        stored = {"generate_capture": "generate", "segment": "segment"}
        for stage, s in pipe["stage_seconds"].items():
            per = pipe["stored_bytes_per_image"].get(stored.get(stage, ""), None)
            lines.append(f"| {stage} | {s:.1f} | {pipe['seconds_per_image'][stage]:.3f} | "
                         f"{'' if per is None else f'{per / 1e6:.2f} MB'} |")
    proj = result["projection"]
    if proj:
        st = proj["setting"]
        lines += ["", f"Projected `make bench EXP=paper_sdxl_sweep` ({st['prompts']} prompts x {st['seeds']} seeds = "
                      f"{st['images']} images, {st['steps']} steps, {st['jobs']} jobs): about {proj['total_hours']} h "
                      f"on this card and {proj['total_gb']} GB of disk; generate rate from "
                      f"{proj['generate_rate_from']}.",
                  "", "| part | hours | disk |", "| --- | ---: | ---: |"]
        disk = {"generate_capture": "generate", "segment": "segment", "evaluate_report": "run_outputs"}
        for part, s in proj["seconds"].items():
            lines.append(f"| {part} | {s / 3600:.2f} | {_gb(proj['disk_bytes'][disk[part]]) if part in disk else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.rehearsal", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pipe = sub.add_parser("pipeline", help="one harness run in-process -> WORK/phase_pipeline.json")
    pipe.add_argument("--work", type=Path, required=True)
    pipe.add_argument("overrides", nargs="*")
    phase = sub.add_parser("phase", help="record a phase the shell ran")
    phase.add_argument("--work", type=Path, required=True)
    phase.add_argument("--name", choices=PHASES, required=True)
    phase.add_argument("--status", required=True)
    phase.add_argument("--seconds", type=float, required=True)
    phase.add_argument("--log", type=Path)
    rep = sub.add_parser("report", help="merge the phases into OUT/gpu_rehearsal_<card>.json/.md")
    rep.add_argument("--work", type=Path, required=True)
    rep.add_argument("--out", type=Path, required=True)
    rep.add_argument("--card", required=True)
    rep.add_argument("--budget", type=float)
    args = p.parse_args(argv)
    if args.command == "pipeline":
        t0 = time.perf_counter()
        result = run_pipeline(args.overrides, args.work)
        record_phase(args.work, "pipeline", "ok", time.perf_counter() - t0, result=result)
    elif args.command == "phase":
        record_phase(args.work, args.name, args.status, args.seconds, args.log)
    else:
        print(to_markdown(report(args.work, args.out, args.card, args.budget)))


if __name__ == "__main__":
    main()
