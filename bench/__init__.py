"""Selective aggregation vs DAAM: a benchmark harness for cross-attention heat maps."""

CODE_VERSION = "2"  # bump when a stage's stored output changes meaning; it is part of every cache key


class ModelUnavailableError(RuntimeError):
    """A model is neither in the local cache / path nor reachable; the message names the fix."""


class StoreWriteError(RuntimeError):
    """A cache or run file could not be written (disk full, file-size limit); the message names the file."""


#: errors caused by the user's input or environment: the CLI prints their one-line message, no traceback
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ModelUnavailableError, StoreWriteError)
