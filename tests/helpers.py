"""What several test modules share: repository paths, a fixed relevance source, composing the Hydra config,
a small head index and synthetic long tables / summaries."""

from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from bench.heads import HeadIndex, Layer
from bench.relevance import Relevance
from bench.report import summarise

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"


def cfg_for(overrides: list[str]) -> DictConfig:
    """conf/config.yaml composed with `overrides`, set as the current Hydra config (as `python -m bench` does)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


class FixedRelevance(Relevance):
    """A relevance source returning one given vector for every word (tests of ranking and aggregation)."""

    name = "fixed"

    def __init__(self, vector):
        self.v = vector

    def vector(self, word, head_index):
        return self.v

    def describe(self):
        return "fixed"


def two_resolution_index() -> HeadIndex:
    """18 heads: 6 down and 8 up at 16x16, 4 mid at 8x8."""
    return HeadIndex([Layer("down", 0, 6, (16, 16), "a", 0), Layer("mid", 0, 4, (8, 8), "b", 6),
                      Layer("up", 0, 8, (16, 16), "c", 10)])


def synthetic_table(n_prompts=30, seeds=(0, 1), taus=(0.4, 0.5), gain=0.03, seed=0) -> pd.DataFrame:
    """daam + selective (2 variants) rows; prompt p has 1 + p % 2 words; pairs of prompt 0 are excluded."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        level = rng.uniform(0.2, 0.8)
        for s in seeds:
            for w in range(1 + p % 2):
                base = level + 0.05 * rng.standard_normal()
                for tau in taus:
                    excluded = "no detection" if p == 0 else None
                    for method, variant, shift in (("daam", "all", 0.0), ("selective", "k=10", gain),
                                                   ("selective", "k=20", 0.0)):
                        iou = np.nan if excluded else base + shift + 0.02 * rng.standard_normal() - tau / 10
                        rows.append({"sample_id": f"p{p}__s{s}", "prompt_id": f"p{p}", "seed": s, "tau": tau,
                                     "word": f"w{w}", "method": method, "variant": variant, "n_heads": 10,
                                     "iou": iou, "excluded": excluded})
    return pd.DataFrame(rows)


def curve_table() -> pd.DataFrame:
    """synthetic_table (8 prompts, tau 0.4) plus a 20-k curve peaking at k=8."""
    table = synthetic_table(n_prompts=8, taus=(0.4,))
    curve = table[table.variant == "k=10"].copy()
    parts = [table]
    for k in range(1, 21):
        parts.append(curve.assign(method="kcurve", variant=f"k={k}", n_heads=k, iou=curve.iou - abs(k - 8) / 100))
    return pd.concat(parts, ignore_index=True)


def sweep_summary() -> pd.DataFrame:
    """A merged sweep over relevance: DAAM's pairs are the same in the hrv and random jobs; the held-out oracle
    is scored at its calibrated tau (0.5) only, and with one k."""
    hrv = synthetic_table(n_prompts=8)
    random = hrv.assign(iou=np.where(hrv.method == "daam", hrv.iou, hrv.iou - 0.1))
    oracle = synthetic_table(n_prompts=8, taus=(0.5,), gain=0.2).query("variant != 'k=10'")
    tables = [t.assign(relevance=name) for name, t in (("hrv", hrv), ("random", random), ("oracle", oracle))]
    return summarise(pd.concat(tables, ignore_index=True), by=["relevance"])
