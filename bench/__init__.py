"""Selective aggregation vs DAAM: a benchmark harness for cross-attention heat maps."""

CODE_VERSION = "1"  # bump when a stage's stored output changes meaning; it is part of every cache key


class ModelUnavailableError(RuntimeError):
    """A model is neither in the local cache / path nor reachable; the message names the fix."""


#: errors caused by the user's input or environment: the CLI prints their one-line message, no traceback
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ModelUnavailableError)
