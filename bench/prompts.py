"""Prompt sets (JSONL rows `{id, prompt, words}`) and word -> token positions.

A prompt id names files in the cache (`<id>__s<seed>`), so it is a JSON string of 1-128 letters, digits, `.`,
`_` or `-`, starting with a letter or digit, and unique ignoring case (case-insensitive file systems); every
other id fails in one line naming the file and line, before any model loads.

Token positions follow daam 0.2.0's rule so both aggregate the same columns: tokenize the
lower-cased prompt, strip the `</w>` word-end marker, find every occurrence of the word's own token
sequence, and shift by one for the start token.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from bench.cache import file_sha256

MAX_TEXT_TOKENS = 75  # 77 positions minus start and end tokens
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # see the module docstring


@dataclass(frozen=True)
class PromptRow:
    id: str
    prompt: str
    words: tuple[str, ...]
    extra: dict  # any other fields of the row (e.g. mask paths, concepts)


def load_prompt_set(path: str | Path, limit: int | None = None) -> list[PromptRow]:
    """Read a JSONL prompt set; every row needs `id`, `prompt` and a non-empty `words` list."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt set {path} does not exist: set dataset.path to a JSONL file")
    rows, seen = [], {}  # lower-cased id -> line
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not a JSON object ({err.msg}, column {err.colno}): fix that line") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{n}: a row must be a JSON object with id, prompt and words")
        missing = {"id", "prompt", "words"} - rec.keys()
        if missing or not rec["words"]:
            raise ValueError(f"{path}:{n}: row needs id, prompt and a non-empty words list (missing {sorted(missing)})")
        prompt_id = check_id(rec["id"], f"{path}:{n}")
        if prompt_id.lower() in seen:
            raise ValueError(f"{path}:{n}: id {prompt_id!r} repeats the id of line {seen[prompt_id.lower()]} "
                             "(ids are compared ignoring case): give every row its own id")
        seen[prompt_id.lower()] = n
        extra = {k: v for k, v in rec.items() if k not in ("id", "prompt", "words")}
        if "image" in extra:  # file paths in a row are relative to the prompt set's folder
            extra["image"] = str(path.parent / extra["image"])
        if "masks" in extra:
            extra["masks"] = {w: str(path.parent / m) for w, m in extra["masks"].items()}
        rows.append(PromptRow(prompt_id, rec["prompt"], tuple(rec["words"]), extra))
    rows = rows[:limit] if limit else rows
    if not rows:
        raise ValueError(f"prompt set {path} has no rows{f' (dataset.limit={limit})' if limit else ''}: "
                         "add rows or point dataset.path to another file")
    return rows


def check_id(value: object, where: str) -> str:
    """`value` when it is a safe prompt id (module docstring); otherwise a one-line ValueError naming `where`."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: id {value!r} is a JSON {type(value).__name__}; write every id as a string, "
                         f"e.g. \"{value}\"")
    if not SAFE_ID.fullmatch(value):
        shown = repr(value) if len(value) <= 60 else f"{value[:40]!r}... ({len(value)} characters)"
        raise ValueError(f"{where}: id {shown} is not a safe file name: use 1-128 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return value


def prompt_set_hash(rows: list[PromptRow]) -> str:
    """Key of the rows as generation reads them: text fields plus the contents of their `image` files
    (a missing image is checked by the generate stage when it needs one)."""
    images = [file_sha256(r.extra["image"]) if Path(r.extra.get("image", "")).is_file() else None for r in rows]
    text = json.dumps([[r.id, r.prompt, list(r.words), r.extra, im] for r, im in zip(rows, images)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mask_files_hash(rows: list[PromptRow]) -> str:
    """Key of the contents of every mask file the rows name (a segment stage input, hashed by content)."""
    hashes = [[r.id, w, file_sha256(_existing(r, m, f"mask of {w!r}"))]
              for r in rows for w, m in sorted(r.extra.get("masks", {}).items())]
    return hashlib.sha256(json.dumps(hashes).encode()).hexdigest()[:16]


def _existing(row: PromptRow, path: str, what: str) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} ({what} in prompt row {row.id!r}) does not exist: fix the prompt set")
    return path


def _pieces(tokenizer, text: str) -> list[str]:
    return [t.replace("</w>", "") for t in tokenizer.tokenize(text.lower())]


def word_token_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """Positions (0 = start token) of every occurrence of `word`'s tokens in `prompt`; [] if absent."""
    tokens, search = _pieces(tokenizer, prompt), _pieces(tokenizer, word)
    if not search:
        return []
    starts = [i for i in range(len(tokens)) if tokens[i: i + len(search)] == search]
    return [s + j + 1 for s in starts for j in range(len(search))]


def token_positions(tokenizer, rows: list[PromptRow]) -> list[dict[str, list[int]]]:
    """Per row {word: positions}; raises once, listing every word not found in its prompt's tokens."""
    out, offenders = [], []
    for row in rows:
        per_word = {}
        for word in row.words:
            pos = word_token_positions(tokenizer, row.prompt, word)
            if not pos or max(pos) > MAX_TEXT_TOKENS:
                offenders.append(f"{row.id}: {word!r} in {row.prompt!r}")
            per_word[word] = pos
        out.append(per_word)
    if offenders:
        raise ValueError(f"{len(offenders)} word(s) not found in their prompt's tokens (fix the prompt set): "
                         + "; ".join(offenders))
    return out
