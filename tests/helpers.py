"""What several test modules share: repository paths, a fixed relevance source, composing the Hydra config."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from bench.relevance import Relevance

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
