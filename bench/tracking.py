"""Experiment tracking (`logger=none` | `logger=wandb`): a session around one run that is always finished.

`Logger` (logger=none) keeps everything in the run directory. `WandbLogger` logs the resolved config at the
start; the summary metrics, the per-sample table, the summary table, the figures and the overlay images
(with reference and predicted masks) at the end; and finishes the W&B run with exit code 1 when a stage
fails. Mode `auto` is online when WANDB_API_KEY is set and offline otherwise (WANDB_MODE, when set, wins);
offline runs land in `<run dir>/wandb/` for `wandb sync`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from bench.report import curve_methods


class Logger:
    """No tracker: the run directory holds everything (logger=none)."""

    name = "none"

    @contextlib.contextmanager
    def session(self, cfg: DictConfig, run_dir: Path) -> Iterator[Logger]:
        """Open the tracker for one run; it is closed when the block ends, also on an error."""
        yield self

    def log_results(self, run_dir: Path, table: pd.DataFrame, summary: pd.DataFrame, figures: list[Path],
                    overlays: dict | None, provenance: dict | None = None) -> None:
        """Record a finished run's results and what produced them (`bench.provenance.provenance()`)."""


class WandbLogger(Logger):
    """Weights & Biases: config, summary metrics, tables, figures and overlays (see the module docstring)."""

    name = "wandb"

    def __init__(self, project: str = "selective-aggregation", entity: str | None = None, tags: list[str] = (),
                 group: str | None = None, mode: str = "auto", job_type: str = "run"):
        if mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError(f"logger.mode must be auto, online, offline or disabled, got {mode!r}")
        self.project, self.entity, self.tags, self.group = project, entity, list(tags), group
        self.mode, self.job_type = mode, job_type
        self.run = None

    def resolved_mode(self) -> str:
        if os.environ.get("WANDB_MODE"):
            return os.environ["WANDB_MODE"]
        if self.mode != "auto":
            return self.mode
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"

    @contextlib.contextmanager
    def session(self, cfg, run_dir):
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # the task's config, not Hydra's own
        self.run = wandb.init(project=self.project, entity=self.entity, tags=self.tags,
                              group=self.group or sweep_id(), job_type=self.job_type, name=run_dir.name,
                              dir=str(run_dir), mode=self.resolved_mode(),
                              config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous",
                              settings=wandb.Settings(console="off", silent=True))
        # also as a run file: offline runs keep config only in .wandb
        OmegaConf.save(cfg, Path(self.run.dir) / "config_resolved.yaml", resolve=True)
        where = self._where()
        failed = True
        try:
            yield self
            failed = False
        finally:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
            if where:
                print(where)

    def _where(self) -> str:
        """Where the run is, to print when it ends: its URL, or its offline folder and the command uploading it."""
        if self.resolved_mode() == "disabled":
            return ""
        if self.run.offline:
            folder = Path(self.run.dir).parent
            return f"W&B run stored offline in {folder}; upload it with: wandb sync {folder}"
        return f"W&B run: {self.run.url}"

    def log_results(self, run_dir, table, summary, figures, overlays, provenance=None):
        import wandb

        curves = curve_methods(summary)
        for _, r in summary[~summary["method"].isin(curves)].iterrows():
            prefix = f"{r['method']}/{r['variant']}/tau={r['tau']:g}"
            for metric in ("mIoU", "ci95_lo", "ci95_hi", "diff_vs_daam", "p_wilcoxon", "n_pairs"):
                if metric in r and not pd.isna(r[metric]):
                    self.run.summary[f"{prefix}/{metric}"] = float(r[metric])
        points = table[~table["method"].isin(curves)]
        record = {"summary_table": wandb.Table(dataframe=summary)}
        if len(points) <= wandb.Table.MAX_ROWS:
            record["scores"] = wandb.Table(dataframe=points)
        else:  # large tables go through an artifact (W&B's limit for logged tables)
            artifact = wandb.Artifact(f"scores-{self.run.id}", type="results")
            artifact.add(wandb.Table(dataframe=points.head(wandb.Table.MAX_ARTIFACT_ROWS)), "scores")
            self.run.log_artifact(artifact)
        record.update({f"figures/{p.stem}": wandb.Image(str(p)) for p in figures})
        if overlays and overlays["items"]:
            record["overlays"] = [
                wandb.Image(item["image"], caption=f"{item['title']} | {label}",
                            masks={"reference": {"mask_data": item["ref"].astype(np.uint8),
                                                 "class_labels": {1: "reference"}},
                                   "prediction": {"mask_data": cell["mask"].astype(np.uint8),
                                                  "class_labels": {1: label}}})
                for item in overlays["items"] for label, cell in item["maps"].items()]
        self.run.log(record)
        if provenance:
            self.run.config.update({"provenance": provenance})
        for name in ("scores.csv", "summary.csv", "summary.md"):  # files in run.dir are uploaded with the run
            shutil.copy2(run_dir / name, Path(self.run.dir) / name)  # (run.save would symlink them, with a notice)


def sweep_id() -> str | None:
    """The multirun's sweep folder name (one W&B group per sweep); None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None
