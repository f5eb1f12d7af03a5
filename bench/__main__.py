"""Hydra entry point: `python -m bench [overrides]` (see conf/config.yaml; `--help` for examples)."""

import shutil
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bench import USER_ERRORS
from bench.run import run

HYDRA_FILES = {".hydra", "__main__.log"}  # what Hydra writes into a run folder before the run starts


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        run(cfg, run_dir)
    except BaseException as err:
        if hydra_cfg.mode == RunMode.RUN:
            remove_if_empty(run_dir)
        if isinstance(err, USER_ERRORS):
            raise SystemExit(f"error: {err}") from None
        raise


def remove_if_empty(run_dir: Path) -> None:
    """Delete a failed run's folder when it holds only Hydra's own files, so results/runs lists runs with results."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= HYDRA_FILES:
        shutil.rmtree(run_dir)


if __name__ == "__main__":
    main()
