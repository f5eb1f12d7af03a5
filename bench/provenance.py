"""Provenance of a run: the code (git commit, uncommitted changes), library versions, device and dtype.

Written into every run's stats.json, its summary header and the W&B config, and into `bench.perf`'s reports.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def git_state(repo: Path = REPO) -> dict:
    """{"commit": HEAD's hash, "dirty": tracked files differ from it}; both None outside a git checkout."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict:
    """Versions of Python and the libraries the numbers depend on (None: not installed)."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for dist in ("diffusers", "transformers", "huggingface_hub", "daam", "numpy", "hydra-core"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    spacy = sys.modules.get("spacy")  # daam imports it; on the offline GPU machine it may be the stand-in
    out["spacy"] = getattr(spacy, "__version__", None) if spacy else None
    return out


def device_info(device: torch.device) -> dict:
    """The accelerator's name and memory, or the CPU's model, threads and current load."""
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device),
                "memory_bytes": torch.cuda.get_device_properties(device).total_memory}
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        name = found.group(1).strip() if found else name
    return {"type": device.type, "name": name, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def provenance(device: torch.device, dtype: torch.dtype) -> dict:
    """What produced a run's numbers: git state, library versions, the model's device and dtype."""
    return {"git": git_state(), "versions": versions(), "device": device_info(device), "dtype": str(dtype)}


def describe(prov: dict) -> str:
    """One summary-header line of `provenance()`."""
    git, v = prov["git"], prov["versions"]
    code = f"git {git['commit'][:12]}{' + uncommitted changes' if git['dirty'] else ''}" if git["commit"] \
        else "not a git checkout"
    return (f"{code}; torch {v['torch']}, diffusers {v['diffusers']}, transformers {v['transformers']}; "
            f"{prov['device']['name']} ({prov['device']['type']}), {prov['dtype'].removeprefix('torch.')}")
