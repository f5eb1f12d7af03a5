"""Training speed of shapes-world recipes on this machine: samples/s of whole optimizer steps (UNet and text encoder
forward, backward of what is trained, clipping, AdamW, EMA) of `bench.shapes.train.Trainer`, each variant in its
own process(es), the median over timed steps after warm-up, on a pre-rendered batch (rendering is timed apart).

    python scripts/shapes_train_speed.py [--steps 6] [--only NAME ...] [--compile]   # -> Markdown on stdout

A variant is trainer flags plus threads per process and processes run at once (2 x 1 thread = two trainings side
by side, the way two seeds train in parallel); samples/s is per process. Run it on an idle machine and quote the
load printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

#: name -> (trainer flags, threads per process, processes at once). OLD is the world and recipe before the study
#: (32 px, circle / square / triangle / cross, 77-token captions, self-attention, a trained text encoder) at the
#: small widths; the shipped recipe is the trainer's defaults.
OLD = ["--image-size", "32", "--object-size", "0.28", "0.5", "--shapes", "circle", "square", "triangle", "cross",
       "--text-tokens", "77", "--self-attention", "on", "--text-encoder", "train", "--channels", "16", "32", "32",
       "--attn-resolutions", "16", "8", "--batch", "32"]
VARIANTS: dict[str, tuple[list[str], int, int]] = {
    "old world, widths 32/64/64, 1 x 1 thread": (OLD + ["--channels", "32", "64", "64"], 1, 1),
    "old world, 16/32/32, 1 x 1 thread": (OLD, 1, 1),
    "old world, 16/32/32, 1 x 2 threads": (OLD, 2, 1),
    "old world, 16/32/32, 2 x 1 thread": (OLD, 1, 2),
    "old world, batch 16": (OLD + ["--batch", "16"], 1, 1),
    "old world, batch 64": (OLD + ["--batch", "64"], 1, 1),
    "old world, batch 128": (OLD + ["--batch", "128"], 1, 1),
    "old world, channels_last": (OLD + ["--channels-last", "on"], 1, 1),
    "old world, bf16 autocast": (OLD + ["--precision", "bf16"], 1, 1),
    "old world, captions of 16 tokens": (OLD + ["--text-tokens", "16"], 1, 1),
    "old world, no self-attention": (OLD + ["--self-attention", "off"], 1, 1),
    "old world, frozen text encoder": (OLD + ["--text-encoder", "frozen"], 1, 1),
    "old world at 24 px (attention 12, 6)": (OLD + ["--image-size", "24", "--attn-resolutions", "12", "6"], 1, 1),
    "shipped recipe (defaults), 1 x 1 thread": ([], 1, 1),
    "shipped recipe (defaults), 1 x 2 threads": ([], 2, 1),
    "shipped recipe (defaults), 2 x 1 thread": ([], 1, 2),
}
COMPILED = {"shipped recipe, torch.compile": (["--compile"], 1, 1)}


def measure(flags: list[str], steps: int) -> dict:
    """In this process: median seconds of `steps` optimizer steps after 2 warm-up steps, and of rendering a batch."""
    import torch

    from bench.shapes.train import SceneBatches, Trainer, parse_args

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    args = parse_args(["--work", "/nonexistent", "--steps", "1000", "--device", "cpu", *flags])
    trainer = Trainer(args)
    data = SceneBatches(args.batch, 0, args.cfg_dropout, 1000, world=trainer.world, text_tokens=args.text_tokens)
    t0 = time.perf_counter()
    batch = data[0]
    render_s = time.perf_counter() - t0
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        trainer.train_step(batch)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    return {"batch": args.batch, "step_s": step_s, "samples_per_s": args.batch / step_s, "render_s": render_s,
            "unet_params": sum(p.numel() for p in trainer.unet.parameters())}


def run_variant(flags: list[str], threads: int, procs: int, steps: int) -> list[dict]:
    """`procs` processes of `measure` at once, each with `threads` torch threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--child", json.dumps(flags), "--steps", str(steps)]
    children = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    return [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per variant")
    p.add_argument("--only", nargs="+", help="variant names to run (default: all)")
    p.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compilation)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child), args.steps)))
        return
    variants = {**VARIANTS, **(COMPILED if args.compile else {})}
    names = args.only or list(variants)
    load = os.getloadavg()[0]
    lines = [f"Load average before: {load:.2f}; {args.steps} timed steps per variant after 2 warm-up steps "
             f"(`python scripts/shapes_train_speed.py --steps {args.steps}`).", "",
             "| variant | UNet params | batch | step (ms) | samples/s per process | processes | render a batch (ms) |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        flags, threads, procs = variants[name]
        results = run_variant(flags, threads, procs, args.steps)
        rate = np.median([r["samples_per_s"] for r in results])
        r = results[0]
        lines.append(f"| {name} | {r['unet_params'] / 1e6:.2f} M | {r['batch']} | {r['step_s'] * 1000:.0f} | "
                     f"{rate:.1f} | {procs} (total {rate * procs:.1f}) | {r['render_s'] * 1000:.0f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    lines.append(f"\nLoad average after: {os.getloadavg()[0]:.2f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
