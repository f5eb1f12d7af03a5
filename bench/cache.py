"""Stage cache: every stage writes under <cache>/<stage>/<key>/, key = hash(stage config, input keys, code version).

Items are written atomically (temporary file, fsync, then rename), so a killed run leaves only complete
items behind and a rerun resumes where it stopped; a rerun with the same config recomputes nothing.
Every item gets a `<name>.sum` record (sha256 of its bytes, size, the sample id it belongs to, and the stage,
key and relative path it was written as), and every read checks it: a missing, truncated, corrupt, swapped or
copied item (from another sample, key or stage) is `invalid` (one-line warning naming the file, the stage
recomputes it), never silently read. Every item path resolves inside its stage folder (checked), tensors are
read with `torch.load(weights_only=True)` (no code in a cache runs), and temporary files of dead writers are
swept.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from pickle import UnpicklingError  # the type torch.load raises for a file that is not plain data
from typing import TYPE_CHECKING, Any

from bench import CODE_VERSION, StoreWriteError

if TYPE_CHECKING:  # torch-free at import: reporting writes and reads tables through this module
    from bench.heads import HeadIndex

SUM = ".sum"  # suffix of an item's integrity record
HOST = socket.gethostname()
STALE_SECONDS = 24 * 3600  # another host's temporary file older than this is a dead writer's


def stage_key(stage: str, config: Any, inputs: list[str]) -> str:
    """Deterministic 16-hex key of a stage's own config plus the keys of what it reads."""
    text = json.dumps({"stage": stage, "config": config, "inputs": inputs, "code": CODE_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    """Content hash of a file (cache keys of file inputs hash contents, not paths)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file next to `path`, fsync it, then rename it over `path`. On any
    failure the temporary file is removed; a full disk or file-size limit is a one-line StoreWriteError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{HOST}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise StoreWriteError(f"could not write {path}: {err.strerror}; free disk space or raise the "
                                  "file-size limit, then rerun (finished items are kept)") from None
        raise


def sweep_temporaries(folder: Path) -> int:
    """Remove temporary files under `folder` left by dead writers: this host's whose process is gone, other
    hosts' (a cache shared by cluster jobs) once they are a day old; returns how many."""
    removed = 0
    for tmp in folder.rglob(".*.tmp-*"):
        pid, _, rest = tmp.name.rsplit(".tmp-", 1)[1].partition("-")  # <pid>-<random>-<host>
        try:
            if rest.partition("-")[2] == HOST and pid.isdigit():
                dead = not _alive(int(pid))
            else:
                dead = time.time() - tmp.stat().st_mtime > STALE_SECONDS
            if dead:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:  # another process swept or renamed it first
            continue
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class InvalidItem(Exception):
    """A stored item failed its check; the message names the file and what is wrong."""


def inside(root: Path, name: str) -> Path:
    """`root / name`, refused (ValueError) unless it is a relative path without NUL or `..` that resolves inside
    `root` (a symbolic link planted in the cache cannot point a write or a read elsewhere)."""
    parts = Path(name).parts
    if "\0" in name or not parts or Path(name).is_absolute() or ".." in parts:
        raise ValueError(f"{name!r}: not a relative path inside {root}; a prompt id may hold only letters, digits "
                         "and . _ - (fix the prompt set)")
    if any(len(part.encode()) > 250 for part in parts):  # 255 bytes per name, less a temporary file's suffix room
        raise ValueError(f"{name[:60]!r}... ({len(name)} characters): a file name too long for the cache; use "
                         "prompt ids of at most 128 characters")
    path = root / name
    if not path.parent.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{path}: resolves outside {root} (a symbolic link in the cache?); remove it and rerun")
    return path


class StageStore:
    """One stage's output folder for one key: verified items (see the module docstring)."""

    def __init__(self, root: str | Path, stage: str, config: Any, inputs: list[str]):
        self.stage = stage
        self.key = stage_key(stage, config, inputs)
        self.path = Path(root) / stage / self.key
        self.path.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(self.path)
        meta = self.path / "stage.json"
        if not meta.exists():
            write_atomic(meta, json.dumps({"stage": stage, "config": config, "inputs": inputs,
                                           "code": CODE_VERSION}, indent=1, default=str).encode())

    def file(self, name: str) -> Path:
        return inside(self.path, name)

    def _record(self, name: str, data: bytes, owner: str | None) -> dict:
        """What an item's `.sum` holds: its bytes' hash and size, and where it belongs."""
        return {"sha256": sha256(data), "bytes": len(data), "owner": owner, "stage": self.stage, "key": self.key,
                "path": name}

    # --- verified bytes -----------------------------------------------------------------------------------
    def write(self, name: str, data: bytes, owner: str | None = None) -> None:
        """Store `data` as item `name` with its record (hash, size, the sample id `owner`, stage, key, path)."""
        path = self.file(name)
        write_atomic(path, data)  # killed before the record: the old record (or none) does not match, recomputed
        write_atomic(path.parent / (path.name + SUM), json.dumps(self._record(name, data, owner)).encode())

    def read(self, name: str, owner: str | None = None) -> bytes:
        """The item's bytes after checking them against its record; InvalidItem names the file otherwise."""
        path = self.file(name)
        try:
            record = json.loads((path.parent / (path.name + SUM)).read_text())
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidItem(f"{path}: missing (or written without its record)") from None
        except (ValueError, OSError) as err:
            raise InvalidItem(f"{path}: unreadable record ({err})") from None
        if not isinstance(record, dict):
            raise InvalidItem(f"{path}: unreadable record")
        if len(data) != record.get("bytes") or sha256(data) != record.get("sha256"):
            raise InvalidItem(f"{path}: content does not match its recorded hash (truncated or corrupt)")
        if record.get("owner") != owner:
            raise InvalidItem(f"{path}: belongs to {record.get('owner')!r}, expected {owner!r}")
        where = [record.get(k) for k in ("stage", "key", "path")]
        if where != [self.stage, self.key, name]:
            raise InvalidItem(f"{path}: its record was written for {'/'.join(map(str, where))} (copied from another "
                              "stage, key or item)")
        return data

    def has(self, name: str, owner: str | None = None) -> bool:
        """True when the item is present and checks; a present but invalid one is warned about and removed."""
        path = self.file(name)
        if not path.exists() and not (path.parent / (path.name + SUM)).exists():
            return False
        try:
            self.read(name, owner)
        except InvalidItem as err:
            self.discard(name, str(err))
            return False
        return True

    def link(self, name: str, target: str, owner: str | None = None) -> None:
        """Item `name` as a symbolic link to the stored item `target`: the same bytes, its own record and
        owner (synthetic benchmarks that reuse a few samples under many ids)."""
        path, target_owner = self.file(name), json.loads(self.file(target + SUM).read_text()).get("owner")
        data = self.read(target, target_owner)  # checked before a second name points at it
        path.symlink_to(self.file(target))
        write_atomic(path.parent / (path.name + SUM), json.dumps(self._record(name, data, owner)).encode())

    def discard(self, name: str, why: str | None = None) -> None:
        """Remove an item and its record, so its stage recomputes it; warn in one line `why` when given."""
        if why:
            warn(f"{why}; recomputing it")
        path = self.file(name)
        path.unlink(missing_ok=True)
        (path.parent / (path.name + SUM)).unlink(missing_ok=True)

    # --- typed items --------------------------------------------------------------------------------------
    def save_torch(self, name: str, obj: Any, owner: str | None = None) -> None:
        buf = io.BytesIO()
        import torch  # here, not at the top (see HeadIndex above)

        torch.save(obj, buf)
        self.write(name, buf.getvalue(), owner)

    def load_torch(self, name: str, owner: str | None = None) -> Any:
        """Tensors, numbers, strings and containers only (weights_only: a planted pickle runs no code)."""
        import torch

        try:
            return torch.load(io.BytesIO(self.read_or_fail(name, owner)), map_location="cpu", weights_only=True)
        except UnpicklingError:
            raise ValueError(f"{self.file(name)}: holds Python objects besides tensors (not written by this harness); "
                             "delete it and rerun") from None

    def save_json(self, name: str, obj: Any, owner: str | None = None) -> None:
        self.write(name, json.dumps(obj, indent=1, default=str).encode(), owner)

    def load_json(self, name: str, owner: str | None = None) -> Any:
        return json.loads(self.read_or_fail(name, owner))

    def read_or_fail(self, name: str, owner: str | None = None) -> bytes:
        """`read` for a stage that consumes an item its producer has checked: a failure is one line
        (ValueError) telling to rerun, which recomputes the item."""
        try:
            return self.read(name, owner)
        except InvalidItem as err:
            raise ValueError(f"{err}: rerun to recompute it") from None

    def bind_head_index(self, head_index: HeadIndex) -> None:
        """Store the HeadIndex the stage's maps are ordered by, or check it against the stored one."""
        from bench.heads import HeadIndex

        if self.has("head_index.json"):
            if HeadIndex.from_json(self.read("head_index.json").decode()) != head_index:
                raise RuntimeError(f"{self.path}: stored HeadIndex differs from the model's; clear this cache folder")
        else:
            self.write("head_index.json", head_index.to_json().encode())

    def head_index(self) -> HeadIndex:
        from bench.heads import HeadIndex

        return HeadIndex.from_json(self.read_or_fail("head_index.json").decode())
