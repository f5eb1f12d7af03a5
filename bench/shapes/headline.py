"""The shapes world's headline across model seeds: per-seed mIoU by word kind, their spread, and the conclusions
whose sign holds for every seed.

`word_kind_miou` reads a finished image-mode sweep's scores.csv (scripts/shapes_floors.py prints it); `seed_entry`
turns it into one seed's entries; `world_summary` adds the spread and the conclusions (scripts/shapes_world.py
writes results/reference/shapes_world.json with it). `python -m bench.shapes.headline [json]` prints what holds
across the model seeds (`make bench` runs it after its own sweep).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.shapes.world import SHAPES

KINDS = ("shape", "colour")
#: headline entry -> (relevance job of the image-mode sweep, method, variant). Methods that use no relevance
#: (DAAM, chance maps) are read from the HRV job at tau 0.4; the oracle's rows are at its tuned tau.
ENTRIES: dict[str, tuple[str, str, str]] = {
    "daam": ("hrv_shapes", "daam", "all"),
    **{f"{source}_top{k}": (job, "selective", f"k={k}%") for source, job in
       (("hrv", "hrv_shapes"), ("random", "random"), ("oracle", "oracle")) for k in (10, 25, 50)},
    **{f"bottom_top{k}": ("hrv_shapes", "bottom_k", f"k={k}%") for k in (10, 25, 50)},
    "end_of_text": ("hrv_shapes", "end_of_text", "daam heads"),
    "centred_disc": ("hrv_shapes", "centred_disc", "r=0.25"),
    "other_word": ("hrv_shapes", "other_word", "daam heads"),
}
CHANCE = ("end_of_text", "centred_disc", "other_word")
#: (a, b): is a above b? Stated only where the sign holds for every model seed.
COMPARISONS = [("hrv_top25", "daam"), ("hrv_top25", "random_top25"), ("hrv_top25", "bottom_top25"),
               ("oracle_top25", "daam"), ("oracle_top25", "hrv_top25"), ("daam", "best_chance")]


def word_kind_miou(scores: pd.DataFrame, tau: float = 0.4) -> pd.DataFrame:
    """mIoU and pair count by (relevance, method, variant) and word kind (shape / colour) at tau; the oracle
    job's rows are kept at the tau its calibration folds chose. Columns: mean shape, mean colour, count ..."""
    tuned = scores["relevance"].eq("oracle") if "relevance" in scores.columns else False
    scores = scores[((scores["tau"] == tau) | tuned) & scores["excluded"].isna()]
    scores = scores.assign(kind=scores["word"].map(lambda w: "shape" if w in SHAPES else "colour"))
    keys = [c for c in ("relevance", "method", "variant") if c in scores.columns]
    table = scores.groupby([*keys, "kind"])["iou"].agg(["mean", "count"]).unstack("kind")
    table.columns = [f"{stat} {kind}" for stat, kind in table.columns]
    return table


def seed_entry(image_scores: pd.DataFrame, seed: int, train_samples: int, fidelity: float,
               tau: float = 0.4) -> dict:
    """One model seed's headline: every ENTRIES item as {"shape": mIoU, "colour": mIoU} (and its pair counts)."""
    table = word_kind_miou(image_scores, tau)
    missing = [name for name, key in ENTRIES.items() if key not in table.index]
    if missing:
        raise ValueError(f"the image-mode sweep lacks {missing}: run it with relevance=hrv_shapes,oracle,random")
    image = {name: {kind: round(float(table.loc[key, f"mean {kind}"]), 4) for kind in KINDS}
             for name, key in ENTRIES.items()}
    n_pairs = {name: {kind: int(table.loc[key, f"count {kind}"]) for kind in KINDS} for name, key in ENTRIES.items()}
    return {"seed": seed, "train_samples": int(train_samples), "fidelity": round(float(fidelity), 4),
            "image": image, "n_pairs": n_pairs}


def _values(per_seed: list[dict], name: str, kind: str) -> np.ndarray:
    if name == "best_chance":
        return np.array([max(s["image"][c][kind] for c in CHANCE) for s in per_seed])
    return np.array([s["image"][name][kind] for s in per_seed])


def conclusions(per_seed: list[dict]) -> list[str]:
    """Each comparison by word kind: stated where the sign of the difference holds for every seed."""
    if len(per_seed) < 2:
        return [f"only one model evaluated (seed {per_seed[0]['seed']}): no comparison can hold across model seeds"]
    out = []
    for a, b in COMPARISONS:
        for kind in KINDS:
            diff = _values(per_seed, a, kind) - _values(per_seed, b, kind)
            span = f"difference {diff.min():+.3f} .. {diff.max():+.3f} over {len(diff)} seed(s)"
            if (diff > 0).all() or (diff < 0).all():
                relation = ">" if diff[0] > 0 else "<"
                out.append(f"{kind} words: {a} {relation} {b} for every model seed ({span})")
            else:
                out.append(f"{kind} words: {a} vs {b}: the sign differs across model seeds, no conclusion ({span})")
    return out


def world_summary(per_seed: list[dict], default_seed: int, note: str, settings: dict) -> dict:
    """shapes_world.json: the seeds, each seed's entries, their min / max and the conclusions."""
    seeds = [s["seed"] for s in per_seed]
    if default_seed not in seeds:
        raise ValueError(f"default seed {default_seed} is not one of the evaluated seeds {seeds}")
    spread = {name: {kind: {"min": float(_values(per_seed, name, kind).min()),
                            "max": float(_values(per_seed, name, kind).max())} for kind in KINDS}
              for name in ENTRIES}
    for key in ("fidelity", "train_samples"):
        spread[key] = {"min": min(s[key] for s in per_seed), "max": max(s[key] for s in per_seed)}
    return {"model_seeds": seeds, "default_seed": default_seed, "note": note, "settings": settings,
            "per_seed": per_seed, "spread": spread, "conclusions": conclusions(per_seed)}


def world_markdown(world: dict) -> str:
    """The Markdown twin of shapes_world.json."""
    cols = ["seed", "train_samples", "fidelity"] + [f"{n} {k}" for n in ENTRIES for k in KINDS]
    rows = [[s["seed"], s["train_samples"], s["fidelity"]] + [s["image"][n][k] for n in ENTRIES for k in KINDS]
            for s in world["per_seed"]]
    sp = world["spread"]
    rows.append(["min..max", f"{sp['train_samples']['min']}..{sp['train_samples']['max']}",
                 f"{sp['fidelity']['min']:.3f}..{sp['fidelity']['max']:.3f}"]
                + [f"{sp[n][k]['min']:.3f}..{sp[n][k]['max']:.3f}" for n in ENTRIES for k in KINDS])
    table = pd.DataFrame(rows, columns=cols).set_index("seed").T
    lines = ["# Shapes world across model seeds", "",
             f"- model seeds {world['model_seeds']}, default (shipped) seed {world['default_seed']}",
             f"- {world['note']}",
             *(f"- {k}: {v}" for k, v in world["settings"].items()), "",
             "Image mode, mIoU by word kind (tau 0.4; oracle rows at the tau its calibration folds chose); "
             "fidelity = generated-mode share of images that drew the caption.", "",
             table.to_markdown(), "", "## What holds across the model seeds", "",
             *(f"- {c}" for c in world["conclusions"])]
    return "\n".join(lines) + "\n"


def across_seeds_text(path: Path) -> str:
    """What `make bench` prints beside its own run."""
    if not path.exists():
        return f"across model seeds: {path} does not exist (scripts/shapes_world.py writes it)"
    world = json.loads(path.read_text())
    held = [c for c in world["conclusions"] if "every model seed" in c]
    head = (f"from the committed reference, not from this run ({path}; {world['note']}): across model seeds "
            f"{world['model_seeds']}, {len(held)} of {len(world['conclusions'])} comparisons hold for every seed")
    return "\n".join([head, *(f"  - {c}" for c in world["conclusions"])])


if __name__ == "__main__":
    print(across_seeds_text(Path(sys.argv[1] if len(sys.argv) > 1 else "results/reference/shapes_world.json")))
