"""Stand-in for spaCy, used only by scripts/gpu_check.sh on the offline GPU machine when spaCy is missing there.

daam 0.2.0 imports spaCy when it is imported but uses it only for its part-of-speech helpers (`cached_nlp`), which
`daam.trace`, `compute_global_heat_map` and `compute_word_heat_map` never call. The real wheels (spacy, thinc, blis:
about 55 MB for one Python version) do not fit the 64 MiB that can be sent to that machine. Anything that would
really use spaCy fails here with one line.
"""

from spacy import tokens  # noqa: F401  (daam reads spacy.tokens.Token)

__version__ = "0+stand-in"


def load(name: str, *args, **kwargs):
    raise RuntimeError(f"spaCy is a stand-in here (scripts/offline_stubs): cannot load {name!r}")
