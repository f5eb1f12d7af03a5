import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# the tiny models' ops are small: one thread is as fast and does not stall when the other core is busy;
# subprocesses (CLI and multirun tests) inherit the setting, so their numerics match in-process runs
THREADS = os.environ.get("BENCH_TEST_THREADS", "1")
os.environ["OMP_NUM_THREADS"] = THREADS
torch.set_num_threads(int(THREADS))


@pytest.fixture(scope="session")
def tiny():
    from bench.models import build_tiny_sdxl

    return build_tiny_sdxl()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own tokenizer/stage cache unless it asks otherwise."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "stages"))
    monkeypatch.setenv("BENCH_RUNS_DIR", str(tmp_path / "runs"))
