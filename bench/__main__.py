"""Hydra entry point: `python -m bench [overrides]` (see conf/config.yaml)."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from bench import USER_ERRORS
from bench.run import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except USER_ERRORS as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
