"""Learning curves of shapes-world training recipes: every EMA snapshot a training run exported (`--snapshots`) is
evaluated through the harness, as the floors of the world are judged, on a smaller eval set.

    python scripts/shapes_recipe_study.py eval NAME WORK [--scenes 100]   # -> results/reference/shapes_recipe_study.csv
    python scripts/shapes_recipe_study.py plot                           # -> results/reference/shapes_recipe_study.png
    python scripts/shapes_recipe_study.py table                          # every row as Markdown, on stdout

Per snapshot: `python -m bench experiment=shapes_image` (relevance random, one draw, eval scenes 0..N-1, seed 0,
tau 0.4): DAAM mIoU on shape and colour words and the chance maps (end-of-text, centred disc, another object's
word); `python -m bench experiment=shapes_generated` on the same scenes: fidelity (the share of images that drew
the caption, bench.shapes.pseudo_gt.fidelity). A snapshot already in the CSV is skipped, so an interrupted
evaluation resumes. The recipe of each candidate is read from its snapshots' shapes_model.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from bench.shapes.headline import word_kind_miou
from bench.shapes.world import caption_words
from bench.store import read_table

CSV = Path("results/reference/shapes_recipe_study.csv")
PNG = CSV.with_suffix(".png")
CHANCE = {"end_of_text": ("end_of_text", "daam heads"), "centred_disc": ("centred_disc", "r=0.25"),
          "other_word": ("other_word", "daam heads")}


def harness(args: list[str], log: Path) -> None:
    """python -m bench <args> with its output in `log`; one line naming the log when it fails."""
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", "bench", *args], stdout=f, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"python -m bench {' '.join(args)} failed (exit {code}): see {log}")


def evaluate_snapshot(snapshot: Path, scenes: int, runs: Path) -> dict:
    """One snapshot's row: training progress, fidelity, DAAM and chance-map mIoU by word kind."""
    common = [f"model.loader.path={snapshot}", f"dataset.build.n_scenes={scenes}", "dataset.seeds=[0]",
              "relevance=random", "relevance.draws=1", "~analyses.head_diagnostics", "eval.tau=[0.4]",
              "report.figures=false"]
    image_dir, generated_dir = runs / "image", runs / "generated"
    runs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    harness(["experiment=shapes_image", *common, f"hydra.run.dir={image_dir}"], runs / "image.log")
    harness(["experiment=shapes_generated", *common, f"hydra.run.dir={generated_dir}"], runs / "generated.log")
    table = word_kind_miou(read_table(image_dir))
    fidelity = pd.read_csv(generated_dir / "fidelity.csv")
    meta = json.loads((snapshot / "shapes_model.json").read_text())
    row = {"step": meta["step"], "samples": meta.get("train_samples", meta["step"] * meta["batch"]),
           "train_minutes": meta["train_minutes"],
           "fidelity": fidelity["faithful"].mean(), "colours_ok": fidelity["colours_ok"].mean(),
           "front_shape_ok": fidelity["front_shape_ok"].mean(),
           "front_shape_ok_by_shape": json.dumps(front_shape_accuracy(fidelity))}
    for kind in ("shape", "colour"):
        row[f"daam_{kind}"] = table.loc[("daam", "all"), f"mean {kind}"]
        chance = {name: table.loc[key, f"mean {kind}"] for name, key in CHANCE.items()}
        row.update({f"{name}_{kind}": value for name, value in chance.items()})
        row[f"best_chance_{kind}"] = max(chance.values())
    row["n_pairs_shape"] = int(table.loc[("daam", "all"), "count shape"])
    row["eval_seconds"] = round(time.time() - t0, 1)
    row["recipe"] = json.dumps({k: v for k, v in meta.items()
                                if k not in ("step", "train_minutes", "train_samples", "device", "vocabulary")})
    return row


def front_shape_accuracy(fidelity: pd.DataFrame) -> dict[str, float]:
    """Share of images whose front (last-named) object has the prompted shape, by that shape."""
    front = fidelity["prompt"].map(lambda prompt: caption_words(prompt)[-1])
    return {shape: round(float(ok.mean()), 3) for shape, ok in fidelity["front_shape_ok"].groupby(front)}


def evaluate(name: str, work: Path, scenes: int) -> None:
    """Evaluate every snapshot of one candidate not yet in the CSV, appending a row each."""
    snapshots = sorted((work / "snapshots").glob("step_*"))
    if not snapshots:
        raise SystemExit(f"no snapshots in {work / 'snapshots'}: train with --snapshots N")
    for snapshot in snapshots:
        step = int(snapshot.name.split("_")[1])
        done = read_rows()
        if ((done["candidate"] == name) & (done["step"] == step) & (done["scenes"] == scenes)).any():
            continue
        row = {"candidate": name, "scenes": scenes,
               **evaluate_snapshot(snapshot, scenes, work / "study_runs" / snapshot.name)}
        print(f"{name} step {row['step']}: fidelity {row['fidelity']:.3f} DAAM shape {row['daam_shape']:.3f} "
              f"colour {row['daam_colour']:.3f} best chance {row['best_chance_shape']:.3f} "
              f"({row['eval_seconds']} s)", flush=True)
        CSV.parent.mkdir(parents=True, exist_ok=True)
        pd.concat([read_rows(), pd.DataFrame([row])], ignore_index=True).to_csv(CSV, index=False)


def read_rows() -> pd.DataFrame:
    """The study's rows so far (re-read before every append: several candidates may be evaluated at once)."""
    return pd.read_csv(CSV) if CSV.exists() else pd.DataFrame(columns=["candidate", "step", "scenes"])


def plot(csv: Path = CSV, out: Path = PNG) -> None:
    """Three panels over training samples, one colour and marker per candidate (one legend): fidelity; DAAM mIoU
    on shape words (solid) with the best chance map (dashed); DAAM mIoU on colour words. The issue's floors are
    drawn grey."""
    table = pd.read_csv(csv).sort_values(["candidate", "samples"])
    figure = Figure(figsize=(17, 4.6))
    axes = figure.subplots(1, 3)
    colours = matplotlib.colormaps["tab20"]  # one colour and marker per candidate (tab10 repeats after ten)
    markers = "osD^vPX<>p*h"
    for i, (name, rows) in enumerate(table.groupby("candidate", sort=False)):
        x = rows["samples"] / 1000
        style = {"color": colours(i % 20), "marker": markers[i % len(markers)]}
        axes[0].plot(x, rows["fidelity"], "-", label=name, **style)
        axes[1].plot(x, rows["daam_shape"], "-", **style)
        axes[1].plot(x, rows["best_chance_shape"], "--", alpha=0.6, **style)
        axes[2].plot(x, rows["daam_colour"], "-", **style)
    panels = ((axes[0], "generated-mode fidelity", 0.8),
              (axes[1], "image mode, shape words: DAAM (solid), best chance map (dashed)", 0.45),
              (axes[2], "image mode, colour words: DAAM mIoU", None))
    for ax, title, floor in panels:
        if floor is not None:
            ax.axhline(floor, color="grey", lw=1, ls=":")
            ax.text(ax.get_xlim()[1], floor, f" floor {floor}", color="grey", fontsize=7, va="bottom", ha="right")
        ax.set(xlabel="training samples (thousands)", ylim=(0, 1))
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=7, title="candidate")
    sizes = " or ".join(str(n) for n in sorted(table["scenes"].unique(), reverse=True))
    figure.suptitle(f"Shapes-world recipe study ({csv}; the first {sizes} eval scenes per row, seed 0, tau 0.4)",
                    fontsize=10)
    figure.tight_layout(rect=(0, 0, 0.87, 1))
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


def table(csv: Path = CSV) -> str:
    """Every evaluated snapshot as a Markdown table, candidates in the order they were added."""
    rows = pd.read_csv(csv)
    rows["candidate"] = pd.Categorical(rows["candidate"], rows["candidate"].unique())
    rows = rows.sort_values(["candidate", "samples"])
    out = pd.DataFrame({
        "candidate": rows["candidate"], "step": rows["step"], "samples (k)": (rows["samples"] / 1000).round(1),
        "train min": rows["train_minutes"].round(1), "eval scenes": rows["scenes"],
        "fidelity": rows["fidelity"].round(3), "front shape ok": rows["front_shape_ok"].round(3),
        "DAAM shape": rows["daam_shape"].round(3), "best chance shape": rows["best_chance_shape"].round(3),
        "DAAM colour": rows["daam_colour"].round(3), "best chance colour": rows["best_chance_colour"].round(3)})
    return out.to_markdown(index=False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval", help="evaluate a candidate's snapshots")
    e.add_argument("name", help="the candidate's name in the CSV")
    e.add_argument("work", type=Path, help="the training run's --work folder (holding snapshots/)")
    e.add_argument("--scenes", type=int, default=100, help="eval scenes (seed 0 only)")
    sub.add_parser("plot", help="draw the curves of every candidate in the CSV")
    sub.add_parser("table", help="print every row of the CSV as Markdown")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.command == "eval":
        evaluate(args.name, args.work, args.scenes)
    elif args.command == "plot":
        plot()
    else:
        print(table())


if __name__ == "__main__":
    main()
