"""Experiment 3's misinterpretation diagnosis (bench.analyses.polysemy) in a run."""

import pandas as pd
from helpers import REPO, cfg_for

from bench.run import run


def test_polysemy_experiment_on_tiny(tmp_path, monkeypatch):
    """Experiment 3 end to end (word-level HRV, the diagnosis table and figure); without the head diagnostics it
    inherits from paper_sdxl (their held-out oracle needs more prompts than this one)."""
    monkeypatch.chdir(REPO)
    cfg = cfg_for(["experiment=polysemy", "model=tiny_sdxl", "segmenter=file_masks", "dataset.limit=1",
                   "dataset.seeds=[0]", "model.generation.steps=2", "relevance.probe_limit=2", "report.figures=false",
                   "~analyses.head_diagnostics"])
    summary = run(cfg, tmp_path)
    assert set(summary["relevance"]) == {"", "hrv_word[hrv_probe n=2 x 2 steps]"}
    table = pd.read_csv(tmp_path / "polysemy.csv")
    assert len(table) == 2 and set(table["concept"]) == {"Animals", "Sports Equipment"}  # "bat": 2 concepts
    assert table.groupby("sample_id")["interpretation"].nunique().eq(1).all()
    assert (tmp_path / "polysemy.png").stat().st_size > 0
    assert "interpretation = intended concept in" in (tmp_path / "polysemy.md").read_text()
