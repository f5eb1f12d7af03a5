"""The shapes world's headline over model seeds: evaluate each trained model with the harness, write
results/reference/shapes_world.{json,md}.

    python scripts/shapes_world.py runs/seed_0 runs/seed_1 runs/seed_2 --seeds 0 1 2 --default-seed 0

Per model: `python -m bench -m experiment=shapes_image model.loader.path=<dir>` (relevance hrv_shapes, oracle,
random: DAAM, HRV / random / held-out oracle top 10/25/50%, bottom 25%, the chance maps, head diagnostics) and
`python -m bench experiment=shapes_generated model.loader.path=<dir> relevance=random` (generated-mode fidelity),
then mIoU by word kind at tau 0.4 (bench.shapes.headline). Extra harness overrides (`--override dataset.limit=20`)
go to both runs; --jobs models are evaluated at once. train_samples comes from each model's shapes_model.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from bench.shapes.headline import seed_entry, world_markdown, world_summary
from bench.store import read_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help="model folders written by bench.shapes.train")
    p.add_argument("--seeds", type=int, nargs="+", help="each model's training seed (default: from shapes_model.json)")
    p.add_argument("--default-seed", type=int, help="the shipped model's seed (default: the first)")
    p.add_argument("--out", type=Path, default=Path("results/reference/shapes_world"), help="writes <out>.json/.md")
    p.add_argument("--work", type=Path, default=Path("results/runs/shapes_world"), help="the harness runs' folders")
    p.add_argument("--override", action="append", default=[], help="harness override for both runs (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="models evaluated at once")
    p.add_argument("--note", default="", help="what these models are (written into the json)")
    return p.parse_args(argv)


def harness(args: list[str], log: Path) -> None:
    """python -m bench <args>, output to `log`; one line naming the log when it fails."""
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", "bench", *args], stdout=f, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"python -m bench {' '.join(args)} failed (exit {code}): see {log}")


def evaluate(model: Path, seed: int, work: Path, overrides: list[str]) -> dict:
    """Both harness runs for one model; returns its seed entry plus its head-diagnostics rho by source."""
    folder = work / f"seed_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    path = f"model.loader.path={model}"  # as given: data/shapes/models/seed_0 shares make bench's cache key
    harness(["-m", "experiment=shapes_image", path, f"hydra.sweep.dir={folder / 'image'}", *overrides],
            folder / "image.log")
    harness(["experiment=shapes_generated", path, "relevance=random", "relevance.draws=1",
             "~analyses.head_diagnostics", f"hydra.run.dir={folder / 'generated'}", *overrides],
            folder / "generated.log")
    meta = json.loads((model / "shapes_model.json").read_text())
    train_samples = meta.get("train_samples", meta["step"] * meta["batch"])
    fidelity = pd.read_csv(folder / "generated" / "fidelity.csv")["faithful"].mean()
    entry = seed_entry(read_table(folder / "image"), seed, train_samples, fidelity)
    rho = {}
    for diagnostics in sorted((folder / "image").glob("*/head_diagnostics.csv")):
        table = pd.read_csv(diagnostics)
        overall = table[table["group"] == "all"]
        rho.update({r.source: {"rho": round(r.rho, 4), "ci95": [round(r.ci95_lo, 4), round(r.ci95_hi, 4)]}
                    for r in overall.itertuples()})
    entry["head_rho"] = rho
    entry["eval_seconds"] = round(time.time() - t0, 1)
    print(f"seed {seed}: {model} evaluated in {entry['eval_seconds']} s", flush=True)
    return entry


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    missing = [str(m) for m in args.models if not (m / "shapes_model.json").exists()]
    if missing:
        raise SystemExit(f"no shapes model at {missing}: train with python -m bench.shapes.train first")
    seeds = args.seeds or [json.loads((m / "shapes_model.json").read_text())["seed"] for m in args.models]
    if len(seeds) != len(args.models) or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds needs one distinct seed per model: {len(args.models)} models, seeds {seeds}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ThreadPoolExecutor(args.jobs) as pool:
        per_seed = list(pool.map(lambda ms: evaluate(ms[0], ms[1], args.work, args.override),
                                 zip(args.models, seeds)))
    default = seeds[0] if args.default_seed is None else args.default_seed
    settings = {"models": [str(m) for m in args.models], "harness overrides": args.override or "none",
                "image mode": "experiment=shapes_image, relevance hrv_shapes / oracle / random",
                "generated mode": "experiment=shapes_generated relevance=random (fidelity only)"}
    world = world_summary(per_seed, default, args.note or "models differ only in the training seed", settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(world, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(world_markdown(world))
    print(world_markdown(world))


if __name__ == "__main__":
    main()
