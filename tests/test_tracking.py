"""W&B logger, offline: the run directory holds the config, summary and tables; a failing run is finished."""

import json
import time

import numpy as np
import pytest
import wandb
from helpers import REPO, synthetic_table
from omegaconf import OmegaConf

from bench.figures import write_figures
from bench.report import summarise
from bench.run import build
from bench.tracking import Logger, WandbLogger


def test_wandb_offline_run_holds_config_summary_and_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    table = synthetic_table(n_prompts=6, taus=(0.4,))
    summary = summarise(table)
    table.to_csv(tmp_path / "scores.csv", index=False)
    summary.to_csv(tmp_path / "summary.csv", index=False)
    (tmp_path / "summary.md").write_text("# test\n")
    image = np.zeros((32, 32, 3), np.uint8)
    cell = {"heat": np.random.rand(16, 16).astype(np.float32), "mask": np.eye(32, dtype=bool), "tau": 0.4}
    overlays = {"items": [{"title": "p1 s0: w0", "image": image, "ref": np.eye(32, dtype=bool),
                           "maps": {"daam all": cell}}]}
    figures = write_figures(summary, tmp_path, overlays=overlays)
    cfg = OmegaConf.create({"title": "tracking test", "eval": {"tau": 0.4}, "size": "${eval.tau}"})
    logger = WandbLogger(project="bench-test", tags=["test"])
    with logger.session(cfg, tmp_path):
        logger.log_results(tmp_path, table, summary, figures, overlays, {"git": {"commit": "abc123", "dirty": False}})
    assert wandb.run is None and logger.run is None  # finished
    run_dir, = (tmp_path / "wandb").glob("offline-run-*")
    out = capsys.readouterr()
    last = out.out.strip().splitlines()[-1]
    assert last == f"W&B run stored offline in {run_dir}; upload it with: wandb sync {run_dir}"
    assert "Symlinked" not in out.out + out.err
    files = run_dir / "files"
    assert OmegaConf.load(files / "config_resolved.yaml") == {"title": "tracking test", "eval": {"tau": 0.4},
                                                              "size": 0.4}
    assert (files / "summary.csv").read_text() == (tmp_path / "summary.csv").read_text()
    scores, = (files / "media" / "table").glob("scores_*.table.json")
    logged = json.loads(scores.read_text())
    assert len(logged["data"]) == len(table) and logged["columns"] == list(table.columns)
    assert [p.name for p in figures] == ["fig_groups.png", "fig_overlays.png"]  # one tau, no k-curve
    assert len(list((files / "media" / "images" / "figures").glob("fig_*.png"))) == len(figures)
    assert list((files / "media" / "images" / "mask").glob("*.mask.png"))  # overlay masks
    # config and summary records in W&B's own log (wandb-core may still be flushing it after finish())
    log = run_dir / f"run-{run_dir.name.rsplit('-', 1)[1]}.wandb"
    deadline = time.monotonic() + 20
    while b"daam/all/tau=0.4/mIoU" not in log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"tracking test" in log.read_bytes() and b"daam/all/tau=0.4/mIoU" in log.read_bytes()
    assert b"abc123" in log.read_bytes()  # provenance in the config


def test_wandb_run_is_finished_when_a_stage_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(project="bench-test")
    with pytest.raises(RuntimeError, match="stage failed"):
        with logger.session(OmegaConf.create({"a": 1}), tmp_path):
            assert wandb.run is not None
            raise RuntimeError("stage failed")
    assert wandb.run is None and logger.run is None
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1


def test_logger_configs_and_mode(monkeypatch):
    none = build(OmegaConf.load(REPO / "conf" / "logger" / "none.yaml"))
    assert type(none) is Logger
    with none.session(OmegaConf.create({}), REPO) as same:
        assert same is none
    wb = build(OmegaConf.load(REPO / "conf" / "logger" / "wandb.yaml"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wb.resolved_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wb.resolved_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wb.resolved_mode() == "disabled"
    with pytest.raises(ValueError, match="logger.mode"):
        WandbLogger(mode="sometimes")
