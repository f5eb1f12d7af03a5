"""Stand-in for spacy.tokens (see the package docstring)."""


class Token:
    """Placeholder type: daam annotates a dataclass field with it."""
