"""Selective aggregation vs DAAM: a benchmark harness for cross-attention heat maps."""

import logging
from pathlib import Path

CODE_VERSION = "3"  # bump when a stage's stored output changes meaning; it is part of every cache key
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the Hydra configs, for CLIs that compose them
BLOCKS = ("down", "mid", "up")  # UNet block groups a config may name (method.blocks), in forward order
INCOMPLETE = "INCOMPLETE"  # marker file of a run folder whose run failed or was stopped: never read as a result


class ModelUnavailableError(RuntimeError):
    """A model is neither in the local cache / path nor reachable; the message names the fix."""


class StoreWriteError(RuntimeError):
    """A cache or run file could not be written (disk full, file-size limit); the message names the file."""


#: errors caused by the user's input or environment: the CLI prints their one-line message, no traceback
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ModelUnavailableError, StoreWriteError)


class _NoTorchvisionFallbackNotice(logging.Filter):
    """transformers warns on every run without torchvision that the CLIP / SigLIP image processors diffusers
    imports fall back to their PIL versions; the harness never uses them, so the notice is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionFallbackNotice())
