"""Stage cache: every stage writes under <cache>/<stage>/<key>/, key = hash(stage config, input keys, code version).

Items are written atomically (temporary file, then rename), so a killed run leaves only complete
items behind and a rerun resumes where it stopped; a rerun with the same config recomputes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from bench import CODE_VERSION
from bench.heads import HeadIndex


def stage_key(stage: str, config: Any, inputs: list[str]) -> str:
    """Deterministic 16-hex key of a stage's own config plus the keys of what it reads."""
    text = json.dumps({"stage": stage, "config": config, "inputs": inputs, "code": CODE_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class StageStore:
    """One stage's output folder for one key."""

    def __init__(self, root: str | Path, stage: str, config: Any, inputs: list[str]):
        self.key = stage_key(stage, config, inputs)
        self.path = Path(root) / stage / self.key
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.path / "stage.json"
        if not meta.exists():
            write_atomic(meta, json.dumps({"stage": stage, "config": config, "inputs": inputs,
                                           "code": CODE_VERSION}, indent=1, default=str).encode())

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def save_torch(self, name: str, obj: Any) -> None:
        buf = io.BytesIO()
        torch.save(obj, buf)
        write_atomic(self.path / name, buf.getvalue())

    def load_torch(self, name: str) -> Any:
        return torch.load(self.path / name, map_location="cpu", weights_only=False)

    def save_json(self, name: str, obj: Any) -> None:
        write_atomic(self.path / name, json.dumps(obj, indent=1, default=str).encode())

    def load_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def bind_head_index(self, head_index: HeadIndex) -> None:
        """Store the HeadIndex the stage's maps are ordered by, or check it against the stored one."""
        if self.has("head_index.json"):
            if HeadIndex.from_json(self.file("head_index.json").read_text()) != head_index:
                raise RuntimeError(f"{self.path}: stored HeadIndex differs from the model's; clear this cache folder")
        else:
            write_atomic(self.file("head_index.json"), head_index.to_json().encode())
