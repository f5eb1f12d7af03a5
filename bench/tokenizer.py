"""The real CLIP BPE tokenizer, built offline from the vocabulary file inside the open_clip wheel."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

N_MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the file


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode table (the standard reversible mapping)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _open_clip_vocab_gz() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip is not installed: run `make setup` (it installs open_clip_torch --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: reinstall open_clip_torch")
    return path


def tokenizer_dir() -> Path:
    """Write vocab.json + merges.txt once into the cache and return the folder."""
    out = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench")) / "clip_tokenizer"
    if (out / "vocab.json").exists() and (out / "merges.txt").exists():
        return out
    lines = gzip.open(_open_clip_vocab_gz(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab_list)}))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    for name in ("vocab.json", "merges.txt"):
        os.replace(tmp / name, out / name)
    tmp.rmdir()
    return out


@lru_cache(maxsize=4)
def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """CLIP tokenizer (SD / SDXL encoder 1 pads with <|endoftext|>, SDXL encoder 2 with '!')."""
    folder = tokenizer_dir()
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token,
                         model_max_length=77)
