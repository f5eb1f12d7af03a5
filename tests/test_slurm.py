"""Sweeps through a real Slurm (`scripts/slurm_local.sh up`, then `make test-slurm`): Hydra's submitit launcher
(`hydra/launcher=submitit_slurm_cpu`) submits the jobs to slurmctld, sacct answers their states (accounting
through slurmdbd), and the merged table equals the one-process one. Deselected from `make test` (marker
`slurm`): they need the daemons, which `.ci/run` starts and stops around them.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO

from bench import INCOMPLETE
from bench.sweep import report_dir

pytestmark = pytest.mark.slurm

BASE = ["dataset.limit=2", "dataset.seeds=[0]", "model.generation.steps=2", "model.generation.batch_size=1",
        "report.figures=false", "relevance.draws=1", "eval.workers=1"]
KEY = ["method.blocks", "sample_id", "word", "method", "variant", "tau"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """The cluster must be up: a missing one fails here, it is not skipped."""
    if shutil.which("sinfo") is None:
        pytest.fail("no Slurm client here: run scripts/slurm_local.sh up (make slurm-up) first")
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout.split()
    assert "idle" in state or "mixed" in state, f"no idle Slurm node (sinfo: {state}): make slurm-up"


def sweep(tmp: Path, *overrides: str, launcher: str = "submitit_slurm_cpu",
          cache: Path | None = None) -> subprocess.CompletedProcess:
    """A sweep into tmp/sweep on the stage cache tmp/cache (or `cache`); Slurm jobs of one CPU each, so two run at
    once on this 2-CPU node (array_parallelism decides how many do)."""
    env = {**os.environ, "BENCH_CACHE_DIR": str(cache or tmp / "cache"), "BENCH_RUNS_DIR": str(tmp / "runs")}
    one_cpu = ["hydra.launcher.cpus_per_task=1"] if launcher.startswith("submitit_slurm") else []
    cmd = [sys.executable, "-m", "bench", "-m", *BASE, f"hydra/launcher={launcher}", *one_cpu, *overrides,
           f"hydra.sweep.dir={tmp / 'sweep'}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def test_a_sharded_sweep_through_slurm_equals_the_one_process_table(tmp_path):
    """2 shards x 2 head groups = 4 Slurm jobs (an array) on one shared cache; sacct answers, so submitit prints no
    'Bypassing sacct' warning; the merged table has the same rows and IoUs as the basic launcher's."""
    slurm = sweep(tmp_path / "slurm", "shard=0/2,1/2", "method.blocks=[down],[up]")
    assert slurm.returncode == 0, slurm.stderr[-3000:]
    assert "Bypassing sacct" not in slurm.stdout + slurm.stderr
    local = sweep(tmp_path / "local", "method.blocks=[down],[up]", launcher="basic")
    assert local.returncode == 0, local.stderr[-3000:]
    merged = pd.read_csv(tmp_path / "slurm" / "sweep" / "scores.csv").sort_values(KEY).reset_index(drop=True)
    one = pd.read_csv(tmp_path / "local" / "sweep" / "scores.csv").sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(merged[one.columns.drop("shard", errors="ignore")],
                                  one[one.columns.drop("shard", errors="ignore")], check_dtype=False)
    assert "jobs: 4 expected, 4 finished, 0 failed" in (tmp_path / "slurm" / "sweep" / "summary.md").read_text()


def test_a_job_that_fails_on_slurm_is_named_by_the_merge(tmp_path):
    """One job's model folder has a truncated weights file (its configuration is whole, so every check before the
    sweep passes; loading fails inside the job): the other job finishes, the sweep exits non-zero, and the merge
    refuses the partial sweep naming the failed job and why; --partial merges what finished."""
    broken = tmp_path / "broken_model"
    shutil.copytree(REPO / "data" / "shapes" / "models" / "seed_0", broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache"), "BENCH_RUNS_DIR": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "bench", "-m", "experiment=shapes_image", "relevance=random", "relevance.draws=1",
           "~analyses.head_diagnostics", "eval.tau=[0.4]", "dataset.build.n_scenes=2", "dataset.seeds=[0]",
           "report.figures=false", "eval.workers=1", f"model.loader.path=data/shapes/models/seed_0,{broken}",
           "hydra/launcher=submitit_slurm_cpu", "hydra.launcher.cpus_per_task=1",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode != 0
    assert (tmp_path / "sweep" / "1" / INCOMPLETE).exists() and (tmp_path / "sweep" / "0" / "scores.csv").exists()
    with pytest.raises(ValueError, match=r"2 expected, 1 finished, 1 failed \(#1 model.loader.path=.*broken_model: "
                                         r"stopped before it finished: .*Unable to load weights"):
        report_dir(tmp_path / "sweep", figures=False)
    summary = report_dir(tmp_path / "sweep", figures=False, partial=True)
    assert len(summary) and "(a partial sweep, merged as asked)" in (tmp_path / "sweep" / "summary.md").read_text()


def test_one_at_a_time_and_all_at_once_on_one_shared_cache_give_the_same_table(tmp_path):
    """An array with array_parallelism=1, then the same sweep with every job at once on a fresh cache, then that
    sweep again on the first cache: the same table each time, nothing regenerated the third time, no item of the
    shared cache reported invalid."""
    sequential = sweep(tmp_path / "one", "shard=0/2,1/2", "hydra.launcher.array_parallelism=1")
    together = sweep(tmp_path / "all", "shard=0/2,1/2")
    assert sequential.returncode == 0 and together.returncode == 0, sequential.stderr[-2000:] + together.stderr[-2000:]
    tables = [pd.read_csv(tmp_path / name / "sweep" / "scores.csv").sort_values(KEY[1:]).reset_index(drop=True)
              for name in ("one", "all")]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    again = sweep(tmp_path / "again", "shard=0/2,1/2", cache=tmp_path / "one" / "cache")
    logs = list((tmp_path / "again" / "sweep" / ".submitit").rglob("*_log.err"))  # the jobs' own stderr
    assert again.returncode == 0 and len(logs) == 2 and not any("warning:" in p.read_text() for p in logs)
    stats = [json.loads(p.read_text()) for p in sorted((tmp_path / "again" / "sweep").glob("*/stats.json"))]
    assert len(stats) == 2 and all(s["generate"]["generated"] == 0 for s in stats)


def test_scancel_mid_generation_then_the_same_command_finishes_from_the_cache(tmp_path):
    """`scancel` once the first sample is stored; the same command again finishes, generates only what was
    missing (every sample stored before the cancel is read from the cache), and its table equals a clean run's."""
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache"), "BENCH_RUNS_DIR": str(tmp_path / "runs")}
    args = ["dataset.limit=6", "model.generation.steps=4", "shard=0/2,1/2"]
    cmd = [sys.executable, "-m", "bench", "-m", *BASE[2:], *args, "hydra/launcher=submitit_slurm_cpu",
           "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "cache").glob("generate/*/samples/*.safetensors.sum")):
        assert time.monotonic() < deadline and first.poll() is None, "no sample stored before the sweep ended"
        time.sleep(0.05)
    jobs = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True).stdout.split()
    subprocess.run(["scancel", *jobs], check=True)
    assert first.wait(timeout=300) != 0
    stored = {p.name for p in (tmp_path / "cache").glob("generate/*/samples/*.safetensors")}
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    stats = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/stats.json"))]
    assert sum(s["generate"]["cached"] for s in stats) >= len(stored) >= 1
    assert sum(s["generate"]["generated"] + s["generate"]["cached"] for s in stats) == 6 * 2  # 6 prompts x 2 seeds
    clean_env = {**env, "BENCH_CACHE_DIR": str(tmp_path / "clean" / "cache")}
    local = [a for a in cmd if not a.startswith(("hydra/launcher=", "hydra.launcher.", "hydra.sweep.dir="))]
    clean = subprocess.run([*local, "hydra/launcher=basic", f"hydra.sweep.dir={tmp_path / 'clean' / 'sweep'}"],
                           cwd=REPO, env=clean_env, capture_output=True, text=True, timeout=400)
    assert clean.returncode == 0, clean.stderr[-3000:]
    key = KEY[1:]
    tables = [pd.read_csv(tmp_path / name / "scores.csv").sort_values(key).reset_index(drop=True)
              for name in ("sweep", "clean/sweep")]
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_a_timed_out_job_is_requeued_by_submitit_and_resumes_from_the_cache(tmp_path):
    """USR2, the signal Slurm sends signal_delay_s before a job's time limit, once the first sample is stored: with
    timeout_min under 10 submitit counts it as a time-out, checkpoints the job and requeues it (max_num_timeout of
    submitit_slurm_cpu). The sweep then finishes with both jobs, the requeued attempt reads every sample stored
    before the signal from the cache, and no job folder is left marked INCOMPLETE. Slurm holds a requeued job for
    about two minutes; the test releases it (`scontrol update StartTime=now`) to keep the suite short."""
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache"), "BENCH_RUNS_DIR": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "bench", "-m", *BASE[2:], "dataset.limit=6", "model.generation.steps=4",
           "shard=0/2,1/2", "hydra/launcher=submitit_slurm_cpu", "hydra.launcher.timeout_min=5",
           "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # both jobs run, both signalled
    sweep_proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "cache").glob("generate/*/samples/*.safetensors.sum")):
        assert time.monotonic() < deadline and sweep_proc.poll() is None, "no sample stored before the sweep ended"
        time.sleep(0.05)
    running = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], capture_output=True, text=True).stdout.split()
    subprocess.run(["scancel", "--signal=USR2", *running], check=True)  # array elements by name: 123_0, 123_1
    stored = {p.name for p in (tmp_path / "cache").glob("generate/*/samples/*.safetensors")}
    for job in running:  # Slurm holds a requeued job for ~2 minutes (its begin time); release it as an admin can
        while subprocess.run(["squeue", "-h", "-j", job, "-o", "%r"], capture_output=True,
                             text=True).stdout.strip() != "BeginTime":
            assert time.monotonic() < deadline + 60 and sweep_proc.poll() is None, "the job was not requeued"
            time.sleep(0.2)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    output, _ = sweep_proc.communicate(timeout=400)
    assert sweep_proc.returncode == 0, output[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.out"))  # submitit's own
    assert "this job is timed-out" in logs and "Requeued job" in logs, logs[-3000:]
    assert not list((tmp_path / "sweep").glob(f"*/{INCOMPLETE}"))
    stats = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/stats.json"))]
    assert sum(s["generate"]["cached"] for s in stats) >= len(stored) >= 1
    assert sum(s["generate"]["generated"] + s["generate"]["cached"] for s in stats) == 6 * 2  # 6 prompts x 2 seeds
    assert "jobs: 2 expected, 2 finished, 0 failed" in (tmp_path / "sweep" / "summary.md").read_text()
