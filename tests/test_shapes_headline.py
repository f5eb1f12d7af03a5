"""Shapes-world headline over model seeds: entries by word kind, spread, conclusions only where every seed agrees."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench.shapes.headline import ENTRIES, across_seeds_text, conclusions, seed_entry, world_markdown, world_summary


def fake_scores(shift: float, seed: int = 0) -> pd.DataFrame:
    """Rows for every ENTRIES key: two shape and two colour words, plus rows the headline must ignore."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, (relevance, method, variant) in ENTRIES.items():
        base = 0.5 + shift if name == "hrv_top25" else 0.5
        for word in ("circle", "square", "red", "blue"):
            for tau in (0.4, 0.3):
                iou = base + (0.2 if word in ("red", "blue") else 0.0) + (0.05 if tau == 0.3 else 0.0)
                rows.append({"relevance": relevance, "method": method, "variant": variant, "tau": tau, "word": word,
                             "iou": iou + rng.normal(0, 1e-6), "excluded": np.nan})
        rows.append({"relevance": relevance, "method": method, "variant": variant, "tau": 0.4, "word": "circle",
                     "iou": np.nan, "excluded": "no mask"})
    return pd.DataFrame(rows)


def test_seed_entry_by_word_kind():
    entry = seed_entry(fake_scores(0.1), seed=3, train_samples=1000, fidelity=0.9)
    assert entry["image"]["hrv_top25"]["shape"] == pytest.approx(0.6, abs=1e-4)
    assert entry["image"]["daam"]["colour"] == pytest.approx(0.7, abs=1e-4)  # tau 0.4 rows only
    # the oracle keeps every tau (its folds' tuned taus): mean of 0.5 and 0.55
    assert entry["image"]["oracle_top25"]["shape"] == pytest.approx(0.525, abs=1e-4)
    assert entry["n_pairs"]["daam"] == {"shape": 2, "colour": 2}  # the excluded pair is not counted
    with pytest.raises(ValueError, match="lacks"):
        seed_entry(fake_scores(0.1).query("relevance != 'oracle'"), 0, 0, 0.0)


def test_conclusion_stated_only_when_every_seed_agrees(tmp_path):
    agree = [seed_entry(fake_scores(s), i, 100, 0.5) for i, s in enumerate([0.1, 0.2, 0.05])]
    texts = conclusions(agree)
    assert "shape words: hrv_top25 > daam for every model seed (difference +0.050 .. +0.200 over 3 seed(s))" in texts
    split = [seed_entry(fake_scores(s), i, 100, 0.5) for i, s in enumerate([0.1, -0.1, 0.05])]
    assert any("hrv_top25 vs daam: the sign differs across model seeds, no conclusion" in t
               for t in conclusions(split))
    world = world_summary(split, default_seed=1, note="test", settings={})
    assert world["spread"]["hrv_top25"]["shape"] == {"min": pytest.approx(0.4, abs=1e-4),
                                                     "max": pytest.approx(0.6, abs=1e-4)}
    assert world["spread"]["fidelity"] == {"min": 0.5, "max": 0.5}
    assert "min..max" in world_markdown(world)
    path = tmp_path / "world.json"
    path.write_text(json.dumps(world))
    assert "comparisons hold for every seed" in across_seeds_text(path)
    assert conclusions(split[:1]) == ["only one model evaluated (seed 0): no comparison can hold across model seeds"]
    with pytest.raises(ValueError, match="default seed 7"):
        world_summary(split, default_seed=7, note="", settings={})
