"""Hydra multirun on tiny_sdxl: one generation per (prompt, seed) for the whole sweep, shards that merge into
the store and table of a 1-shard run, the multirun-end merge, `make report` and the launcher configs."""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from helpers import REPO, cfg_for
from hydra.utils import get_class
from omegaconf import OmegaConf

from bench import INCOMPLETE
from bench.run import run
from bench.sweep import JOBS, job_dirs, job_overrides, report_dir

BASE = ["dataset.limit=2", "dataset.seeds=[0]", "model.generation.steps=2", "model.generation.batch_size=1",
        "method=kcurve", "eval.tau=[0.3,0.5]", "relevance.draws=1"]
BLOCKS = "method.blocks"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """2 shards x 2 head groups = 4 jobs in one `python -m bench -m` (the multirun end merges them)."""
    root = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "BENCH_CACHE_DIR": str(root / "cache"), "BENCH_RUNS_DIR": str(root / "runs"),
           "BENCH_VERDICTS": str(root / "verdicts.txt")}
    cmd = [sys.executable, "-m", "bench", "-m", *BASE, "report.figures=false", "shard=0/2,1/2",
           f"{BLOCKS}=[down],[up]", f"hydra.sweep.dir={root / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root / "stdout.txt").write_text(proc.stdout)
    return root


def test_a_sweep_ends_with_its_verdict_and_collects_only_that(sweep):
    """The jobs print no table; the merge prints the sweep's verdict last, and only it goes to $BENCH_VERDICTS."""
    out = (sweep / "stdout.txt").read_text()
    verdict = (sweep / "sweep" / "verdict.txt").read_text()
    assert out.rstrip().endswith(verdict.rstrip()) and (sweep / "verdicts.txt").read_text() == verdict + "\n"
    assert verdict.count("verdict of this sweep") == 1 and "blocks=[down]" in verdict
    assert "summary at tau" not in out and out.count("stages: generated") == 4  # one line per job


def test_joblib_launcher_runs_jobs_in_processes_on_the_shared_cache(sweep):
    """hydra/launcher=joblib_cpu for real: 2 local processes, nothing regenerated, one merged table."""
    env = {**os.environ, "BENCH_CACHE_DIR": str(sweep / "cache"), "BENCH_RUNS_DIR": str(sweep / "runs")}
    cmd = [sys.executable, "-m", "bench", "-m", *BASE, "report.figures=false", "hydra/launcher=joblib_cpu",
           f"{BLOCKS}=[down],[up]", f"hydra.sweep.dir={sweep / 'joblib'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2,backend=loky" in proc.stdout + proc.stderr
    jobs = job_dirs(sweep / "joblib")
    stats = [json.loads((j / "stats.json").read_text()) for j in jobs]
    assert len(jobs) == 2 and [s["generate"]["generated"] for s in stats] == [0, 0]
    merged = pd.read_csv(sweep / "joblib" / "scores.csv")
    assert sorted(merged[BLOCKS].unique()) == ["[down]", "[up]"]


def test_sweep_generates_once_per_sample_and_merges(sweep, tiny):
    jobs = job_dirs(sweep / "sweep")
    assert len(jobs) == 4
    stats = [json.loads((j / "stats.json").read_text()) for j in jobs]
    assert sum(s["generate"]["generated"] for s in stats) == 2  # 2 prompts x 1 seed, over all four jobs
    assert [s["generate"]["generated"] + s["generate"]["cached"] for s in stats] == [1, 1, 1, 1]
    assert sum(s["segment"]["segmented"] for s in stats) == 2
    stores = list((sweep / "cache" / "generate").iterdir())
    assert len(stores) == 1 and len(list((stores[0] / "samples").glob("*.safetensors"))) == 2

    merged = pd.read_csv(sweep / "sweep" / "scores.csv")
    assert len(merged) == sum(len(pd.read_csv(j / "scores.csv")) for j in jobs)
    assert {"shard", BLOCKS, "tau"} <= set(merged.columns) and set(merged.tau) == {0.3, 0.5}
    assert [job_overrides(j)[BLOCKS] for j in jobs] == ["[down]", "[up]", "[down]", "[up]"]
    summary = pd.read_csv(sweep / "sweep" / "summary.csv")
    assert "shard" not in summary.columns  # shards are pooled, head groups compared
    daam = summary[summary.method == "daam"]
    assert sorted(daam[BLOCKS]) == ["[down]", "[down]", "[up]", "[up]"] and set(daam.n_prompts) == {2}
    kcurve = summary[summary.method == "kcurve"]
    groups = {f"[{b}]": int(tiny.head_index().mask([b]).sum()) for b in ("down", "up")}
    assert kcurve.groupby(BLOCKS).n_heads.max().to_dict() == groups  # the curve follows the head group
    for name in ("kcurve", "groups", "tau", "overlays"):
        assert (sweep / "sweep" / f"fig_{name}.png").stat().st_size > 5000
    md = (sweep / "sweep" / "summary.md").read_text()
    assert "4 jobs" in md and "pooled" in md and "shard in ['0/2', '1/2']" in md


def test_shards_equal_a_one_shard_run_and_report_reruns(sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "offline")  # the run also goes through the W&B logger (offline)
    cfg = cfg_for([*BASE, f"{BLOCKS}=[down]", "logger=wandb", "report.figures=false"])
    run(cfg, tmp_path / "run")
    sharded = next((sweep / "cache" / "generate").iterdir())
    single = next((tmp_path / "stages" / "generate").iterdir())
    assert sharded.name == single.name  # the same stage key: shards only choose which samples exist
    names = sorted(p.name for p in (single / "samples").glob("*.safetensors"))
    assert names == sorted(p.name for p in (sharded / "samples").glob("*.safetensors")) and len(names) == 2
    for name in names:
        # maps and record (words, slots, prompt, seed) byte for byte
        assert (single / "samples" / name).read_bytes() == (sharded / "samples" / name).read_bytes()
        png = name.replace(".safetensors", ".png")
        assert (single / "images" / png).read_bytes() == (sharded / "images" / png).read_bytes()
    key = ["sample_id", "word", "method", "variant", "tau"]
    one = pd.read_csv(tmp_path / "run" / "scores.csv").sort_values(key).reset_index(drop=True)
    merged = pd.read_csv(sweep / "sweep" / "scores.csv")
    down = merged[merged[BLOCKS] == "[down]"].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(down[one.columns], one, check_dtype=False)
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/files/media/table/scores_*.table.json"))

    before = pd.read_csv(sweep / "sweep" / "summary.csv")
    report_dir(sweep / "sweep", figures=False)  # `make report DIR=...` on the finished sweep
    pd.testing.assert_frame_equal(pd.read_csv(sweep / "sweep" / "summary.csv"), before)


@pytest.mark.parametrize("launcher, target", [
    ("joblib_cpu", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("submitit_slurm_gpu", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher")])
def test_launcher_configs_compose(launcher, target, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = cfg_for([f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_ == target and get_class(target).__name__ == target.rsplit(".", 1)[1]


@pytest.mark.parametrize("experiment", ["smoke_sweep", "paper_sdxl_sweep"])
def test_sweep_experiments_name_existing_keys(experiment, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = cfg_for([f"experiment={experiment}"])
    params = cfg.hydra.sweeper.params
    assert params
    missing = object()
    for key in params:  # a typo in a swept key would fail only when the sweep starts
        assert OmegaConf.select(cfg, key, default=missing) is not missing, key
    assert "kcurve" in cfg.method.methods and "random_k" in cfg.method.methods


def test_reporting_imports_no_model_code():
    """`bench.sweep`, `bench.report` and `bench.figures` read stored results only: no diffusers, transformers or
    torch, and importing them takes under 3 s (it took 16.5 s when they pulled in the generate stage). CPU
    seconds of the process, so that other jobs loading the machine do not stretch the measure (1.1 s of CPU was
    4.0 s of wall time at load average 7.7 on 2 cores; 2.4 s wall when idle)."""
    code = ("import sys, time; t = time.process_time(); import bench.sweep, bench.report, bench.figures; "
            "print(time.process_time() - t); print(*sorted({m.split('.')[0] for m in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    seconds, modules = proc.stdout.splitlines()
    assert not {"diffusers", "transformers", "torch"} & set(modules.split())
    assert float(seconds) < 3.0


def test_submitit_local_launcher_jobs_share_the_cache_and_merge_like_one_process(sweep):
    """hydra/launcher=submitit_local for real (the submitit_slurm plugin's local sibling: each job a submitit
    process): on the cache the one-process sweep filled nothing is regenerated, and the merged table is that
    sweep's, row for row."""
    env = {**os.environ, "BENCH_CACHE_DIR": str(sweep / "cache"), "BENCH_RUNS_DIR": str(sweep / "runs")}
    cmd = [sys.executable, "-m", "bench", "-m", *BASE, "report.figures=false", "hydra/launcher=submitit_local",
           "hydra.launcher.timeout_min=15", "hydra.launcher.cpus_per_task=1", "shard=0/2,1/2",
           f"{BLOCKS}=[down],[up]", f"hydra.sweep.dir={sweep / 'submitit'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((sweep / "submitit" / ".submitit").glob("*/*_submitted.pkl"))  # launched through submitit
    jobs = job_dirs(sweep / "submitit")
    stats = [json.loads((j / "stats.json").read_text()) for j in jobs]
    assert len(jobs) == 4 and [s["generate"]["generated"] for s in stats] == [0, 0, 0, 0]
    key = [BLOCKS, "sample_id", "word", "method", "variant", "tau"]
    launched = pd.read_csv(sweep / "submitit" / "scores.csv").sort_values(key).reset_index(drop=True)
    one_process = pd.read_csv(sweep / "sweep" / "scores.csv").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(launched, one_process)


def test_a_bad_value_in_any_job_stops_the_sweep_before_the_first_job(tmp_path):
    """The second job's k is bad: found before any job runs (it used to run job 0, stop, and merge one job)."""
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache"), "BENCH_RUNS_DIR": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "bench", "-m", *BASE, "method.k=1,150%,25%",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: 1 of 3 jobs would fail, so none was started: job #1 (")
    assert "k='150%' is not a head count" in proc.stderr and not (tmp_path / "sweep").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # the cache root was only checked


def test_the_merge_counts_the_jobs_it_expected(sweep, tmp_path, capsys):
    assert len(json.loads((sweep / "sweep" / JOBS).read_text())) == 4
    assert "- jobs: 4 expected, 4 finished, 0 failed, 0 never finished" in (sweep / "sweep" / "summary.md").read_text()
    partial = tmp_path / "partial"
    shutil.copytree(sweep / "sweep", partial)
    shutil.rmtree(partial / "2")  # never ran
    (partial / "3" / INCOMPLETE).write_text("stopped before it finished: KeyboardInterrupt: stopped by signal "
                                            "SIGTERM\n")
    with pytest.raises(ValueError, match=r"4 expected, 2 finished, 1 failed \(#3 .*shard=1/2 .*stopped by signal "
                                         r"SIGTERM\), 1 never finished \(#2\): rerun the sweep"):
        report_dir(partial, figures=False)
    summary = report_dir(partial, figures=False, partial=True)
    assert set(summary["method"]) and "(a partial sweep, merged as asked)" in (partial / "summary.md").read_text()
    assert "jobs: 4 expected, 2 finished" in capsys.readouterr().out


def test_a_value_the_models_heads_refuse_stops_the_sweep_before_the_first_job(tmp_path):
    """A map resolution the model lacks, in the second job only: checked against the heads its configuration
    describes before any job runs, so no job folder and no cache item is written."""
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache"), "BENCH_RUNS_DIR": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "bench", "-m", *BASE, "method.resolutions=null,7",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1, last
    assert last.startswith("error: 1 of 2 jobs would fail, so none was started: job #1 ("), last
    assert "no heads at resolution 7" in last and not (tmp_path / "sweep").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
