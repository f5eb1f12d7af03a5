"""Fault injection (issue 13's table, one test per row): corrupt, truncate, swap and bit-flip cached artifacts,
a killed writer, a file-size limit, concurrent runs, a truncated table and every bad config value.

A broken cache item is recomputed with a one-line warning naming the file, and the rerun's table is the
baseline's byte for byte; a bad value fails in one line before the model loads (values checked against the
model's heads too: its HeadIndex comes from its configuration, see `bench.models.head_index_from_config`).
One small tiny_sdxl run's cache serves every test (copied).
"""

import ast
import errno
import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import pytest
import torch
from helpers import REPO, FixedRelevance
from omegaconf import OmegaConf
from test_run import cfg_for

import bench.models
from bench import INCOMPLETE, ModelUnavailableError, StoreWriteError
from bench.__main__ import stopped
from bench.aggregate import mean_of_heads, word_head_maps
from bench.cache import StageStore, sweep_temporaries, write_atomic
from bench.checks import brief, check_cache_root
from bench.evaluate import Context, Selective
from bench.figures import OVERLAYS, load_overlays, save_overlays
from bench.generate import generate_stage
from bench.grounded_sam import unavailable_error
from bench.heads import HeadIndex
from bench.prompts import PromptRow, load_prompt_set, prompt_set_hash, token_positions
from bench.run import run
from bench.samples import make_samples
from bench.score import heat_to_mask, iou
from bench.store import GenerateStore, MaskStore, WordMask, mask_name
from bench.sweep import job_dirs, report_dir

SMALL = ["dataset.limit=2", "dataset.seeds=[0]", "model.generation.steps=2", "model.generation.batch_size=1",
         "relevance.draws=1", "report.figures=false", "eval.workers=1"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """One small run (2 prompts x 1 seed) on a copy of the smoke prompt set: root/{data, cache, run}."""
    root = tmp_path_factory.mktemp("faults")
    shutil.copytree(REPO / "data" / "smoke", root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        mp.setenv("BENCH_CACHE_DIR", str(root / "cache"))
        run(cfg_for([*SMALL, f"dataset.path={root / 'data' / 'prompts.jsonl'}"]), root / "run")
    return root


def rerun(baseline: Path, cache: Path, out: Path, monkeypatch, overrides: list[str] = ()) -> dict:
    """The baseline's config (plus overrides) on `cache`; returns the run's stats."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(cache))
    run(cfg_for([*SMALL, f"dataset.path={baseline / 'data' / 'prompts.jsonl'}", *overrides]), out)
    return json.loads((out / "stats.json").read_text())


def copy_cache(baseline: Path, tmp_path: Path) -> Path:
    shutil.copytree(baseline / "cache", tmp_path / "cache", symlinks=True)
    return tmp_path / "cache"


def items(cache: Path, pattern: str) -> list[Path]:
    return sorted(p for p in cache.glob(pattern) if not p.name.endswith(".sum"))


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle: middle + 8] = bytes(255 - b for b in data[middle: middle + 8])
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "8 bytes overwritten": flip_bytes,
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(p.stat().st_size)),
}


@pytest.mark.parametrize("pattern, how, regenerated, resegmented", [
    *[("generate/*/samples/*.safetensors", how, 1, 0) for how in CORRUPTIONS],
    ("generate/*/images/*.png", "truncated", 1, 0),
    ("segment/*/masks/*.json", "garbage", 0, 1),
    ("segment/*/masks/*.png", "garbage", 0, 1),
    ("generate/*/head_index.json", "garbage", 0, 0),
    ("generate/*/model.json", "garbage", 0, 0),
])
def test_corrupt_cache_item_is_recomputed_with_a_warning(baseline, tmp_path, monkeypatch, capsys, pattern, how,
                                                         regenerated, resegmented):
    cache = copy_cache(baseline, tmp_path)
    victim = items(cache, pattern)[0]
    CORRUPTIONS[how](victim)
    stats = rerun(baseline, cache, tmp_path / "run", monkeypatch)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings and all(str(victim) in line for line in warnings), warnings
    assert stats["generate"]["generated"] == regenerated and stats["segment"].get("segmented") == resegmented
    assert (tmp_path / "run" / "scores.csv").read_bytes() == (baseline / "run" / "scores.csv").read_bytes()


@pytest.mark.parametrize("with_record", [False, True])
def test_another_samples_file_copied_over_one_is_recomputed(baseline, tmp_path, monkeypatch, capsys, with_record):
    """Sample B's valid maps over sample A's: caught by A's recorded hash, or (record copied too) by its owner."""
    cache = copy_cache(baseline, tmp_path)
    first, second = items(cache, "generate/*/samples/*.safetensors")[:2]
    shutil.copyfile(second, first)
    if with_record:
        shutil.copyfile(f"{second}.sum", f"{first}.sum")
    stats = rerun(baseline, cache, tmp_path / "run", monkeypatch)
    err = capsys.readouterr().err
    assert f"warning: {first}: " in err and ("belongs to" in err) == with_record
    assert stats["generate"]["generated"] == 1
    assert (tmp_path / "run" / "scores.csv").read_bytes() == (baseline / "run" / "scores.csv").read_bytes()


def test_killed_writer_leaves_nothing_half_done(baseline, tmp_path, monkeypatch):
    """kill -9 between an item and its record, with a temporary file of the dead writer left behind: the
    sample is regenerated, the temporary file swept, the table unchanged."""
    cache = copy_cache(baseline, tmp_path)
    sample = items(cache, "generate/*/samples/*.safetensors")[0]
    Path(f"{sample}.sum").unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = sample.with_name(f".{sample.name}.tmp-{int(dead.stdout)}-0000abcd-{socket.gethostname()}")
    stale.write_bytes(b"half a file")
    stats = rerun(baseline, cache, tmp_path / "run", monkeypatch)
    assert stats["generate"]["generated"] == 1 and not stale.exists()
    assert (tmp_path / "run" / "scores.csv").read_bytes() == (baseline / "run" / "scores.csv").read_bytes()


def test_kill_9_mid_generation_resumes_to_the_same_table(baseline, tmp_path, monkeypatch):
    """A real `kill -9` once the first sample is stored: the killed run's folder stays marked INCOMPLETE (no
    handler runs on SIGKILL: the mark was written at the start); the rerun generates only what is missing, leaves
    no temporary file and writes the baseline's table."""
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache"), "BENCH_RUNS_DIR": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "bench", *SMALL, f"dataset.path={baseline / 'data' / 'prompts.jsonl'}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "cache").glob("generate/*/samples/*.safetensors.sum")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed = list((tmp_path / "runs").rglob(INCOMPLETE))
    assert len(killed) == 1 and killed[0].read_text().startswith("started, not finished"), killed
    stats = rerun(baseline, tmp_path / "cache", tmp_path / "run", monkeypatch)
    assert stats["generate"]["cached"] >= 1 and stats["generate"]["generated"] <= 1
    assert not list((tmp_path / "cache").rglob(".*.tmp-*"))
    assert (tmp_path / "run" / "scores.csv").read_bytes() == (baseline / "run" / "scores.csv").read_bytes()


def test_temporary_files_of_live_writers_are_kept(tmp_path):
    """This host's live writer, and another host's recent one (a shared cache), are never swept."""
    live = tmp_path / f".x.pt.tmp-{os.getpid()}-00000000-{socket.gethostname()}"
    elsewhere = tmp_path / ".y.pt.tmp-1-00000000-another-host"
    old = tmp_path / ".z.pt.tmp-1-00000000-another-host"
    for path in (live, elsewhere, old):
        path.write_bytes(b"being written")
    os.utime(old, (0, 0))
    assert sweep_temporaries(tmp_path) == 1 and live.exists() and elsewhere.exists() and not old.exists()


def test_file_size_limit_fails_in_one_line_and_leaves_no_temporary_file(tmp_path):
    """`ulimit -f` (the same EFBIG as a full disk's ENOSPC path): one line naming the file, no .tmp-* left."""
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache"), "BENCH_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, "-m", "bench", *SMALL], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000)))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("error: could not write ") and "File too large" in last, last
    assert not list((tmp_path / "cache").rglob(".*.tmp-*"))


def test_write_failure_removes_the_temporary_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(bench.StoreWriteError, match=r"could not write .*item\.bin: No space left on device"):
        write_atomic(tmp_path / "item.bin", b"data")
    assert list(tmp_path.iterdir()) == []


def test_concurrent_runs_get_their_own_folders_and_the_same_scores(baseline, tmp_path):
    """Two CLI runs started together on one cache: two run folders, both tables equal to the baseline's."""
    cache = copy_cache(baseline, tmp_path)
    env = {**os.environ, "BENCH_CACHE_DIR": str(cache), "BENCH_RUNS_DIR": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "bench", *SMALL, f"dataset.path={baseline / 'data' / 'prompts.jsonl'}"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    baseline_scores = (baseline / "run" / "scores.csv").read_bytes()
    assert all((r / "scores.csv").read_bytes() == baseline_scores for r in runs)


def test_run_folders_of_one_second_differ(monkeypatch):
    monkeypatch.chdir(REPO)
    assert cfg_for([]).hydra.run.dir != cfg_for([]).hydra.run.dir
    assert cfg_for([]).hydra.sweep.dir != cfg_for([]).hydra.sweep.dir


@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_report_refuses_a_table_that_disagrees_with_its_run(baseline, tmp_path, damage):
    shutil.copytree(baseline / "run", tmp_path / "run")
    scores = tmp_path / "run" / "scores.csv"
    text = scores.read_text()
    scores.write_text(text[: len(text) // 2] if damage == "truncated" else text.replace("0.", "1.", 1))
    with pytest.raises(ValueError, match="scores.csv: .* disagrees? with what its run recorded"):
        report_dir(tmp_path / "run", figures=False)
    if damage == "edited":
        return
    proc = subprocess.run([sys.executable, "-m", "bench.sweep", str(tmp_path / "run")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(f"error: {scores}: ")


def test_report_accepts_the_table_its_run_wrote(baseline, tmp_path):
    shutil.copytree(baseline / "run", tmp_path / "run")
    summary = report_dir(tmp_path / "run", figures=False)
    assert summary["n_pairs"].min() > 0


def test_words_that_sanitise_alike_get_their_own_masks(tmp_path):
    """Two emoji (one slug) and 'a b' / 'a_b': every word keeps its own mask file and mask."""
    store = MaskStore(tmp_path, {"t": 1}, [])
    words = ["🐱", "🐶", "a b", "a_b"]
    masks = {w: WordMask(np.eye(8, dtype=bool) if i % 2 else ~np.eye(8, dtype=bool)) for i, w in enumerate(words)}
    store.save_masks("s0", masks)
    assert len({mask_name("s0", w) for w in words}) == len(words)
    loaded = store.masks("s0")
    assert all(np.array_equal(loaded[w].mask, masks[w].mask) for w in words)


@pytest.fixture(scope="module")
def edited_mask_run(baseline, tmp_path_factory):
    """The baseline's config with one mask file emptied in place and 5 random draws, on a copy of its cache."""
    out = tmp_path_factory.mktemp("edited")
    cache = shutil.copytree(baseline / "cache", out / "cache", symlinks=True)
    row = load_prompt_set(baseline / "data" / "prompts.jsonl", 1)[0]
    word, path = next(iter(row.extra["masks"].items()))
    original = Path(path).read_bytes()
    PIL.Image.fromarray(np.zeros((128, 128), np.uint8)).save(path)
    try:
        with pytest.MonkeyPatch.context() as mp:
            stats = rerun(baseline, cache, out / "run", mp, ["relevance.draws=5"])
    finally:
        Path(path).write_bytes(original)
    return stats, pd.read_csv(out / "run" / "summary.csv"), pd.read_csv(out / "run" / "scores.csv"), row.id, word


def test_a_mask_file_edited_in_place_is_segmented_again(edited_mask_run):
    stats, _, scores, prompt_id, word = edited_mask_run
    assert stats["generate"]["generated"] == 0 and stats["segment"]["segmented"] == 2  # new masks, same images
    pair = scores[(scores["prompt_id"] == prompt_id) & (scores["word"] == word)]
    assert (pair["excluded"] == "empty mask").all() and pair["iou"].isna().all()  # not the stale scores


def test_an_excluded_pair_is_counted_once_whatever_the_draws(edited_mask_run):
    _, summary, scores, _, _ = edited_mask_run
    assert scores["draw"].nunique() == 5
    assert set(summary["n_excluded"]) == {1}, summary[["method", "variant", "n_excluded"]]


def test_unreadable_user_mask_fails_in_one_line(baseline, tmp_path, monkeypatch):
    shutil.copytree(baseline / "data", tmp_path / "data")
    row = load_prompt_set(tmp_path / "data" / "prompts.jsonl", 1)[0]
    word, path = next(iter(row.extra["masks"].items()))
    Path(path).write_bytes(b"not a png")
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=rf"mask file {path} \(row {row.id}, word '{word}'\) is not a readable image"):
        run(cfg_for([*SMALL, f"dataset.path={tmp_path / 'data' / 'prompts.jsonl'}"]), tmp_path / "run")


# --- every input checked before the model loads ------------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model is an error: a check that passes this fixture ran before it."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad value was refused")

    load.unet_layout = bench.models.build_tiny_sdxl.unet_layout  # it still describes its heads (describes_heads)
    monkeypatch.setattr(bench.models, "build_tiny_sdxl", load)
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("override, message", [
    ("eval.tau=1.5", r"eval.tau must be one value or a list of values in \[0, 1\], got 1.5"),
    ("eval.tau=-0.1", r"eval.tau must be .* got -0.1"),
    ("eval.tau=[0.3,2]", r"eval.tau must be .* got \[0.3, 2\]"),
    ("eval.workers=0", "eval.workers must be a whole number >= 1, got 0"),
    ("method.k=0", "k=0 is not a head count"),
    ("method.k=-1", "k=-1 is not a head count"),
    ("method.k=150%", "k='150%' is not a head count"),
    ("method.k=2.5", "k=2.5 is not a head count"),
    ("method.blocks=foo", r"method.blocks: unknown block\(s\) \['foo'\]"),
    ("method.resolutions=[x]", "method.resolutions must be map sides"),
    ("shard=2/2", "shard=2/2: use i/n with 0 <= i < n"),
    ("shard=a/b", "shard=a/b: use i/n"),
    ("+analyses.counts._target_=collections.Counter",
     "analyses.counts: collections.Counter is not a bench.analyses.Analysis: point _target_ at a subclass"),
])
def test_bad_value_fails_in_one_line_before_the_model_loads(no_model, tmp_path, override, message):
    with pytest.raises(ValueError, match=message) as err:
        run(cfg_for([*SMALL, override]), tmp_path / "run")
    assert "\n" not in str(err.value)


def test_empty_prompt_set_fails_before_the_model_loads(no_model, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=f"prompt set {tmp_path / 'empty.jsonl'} has no rows"):
        run(cfg_for([f"dataset.path={tmp_path / 'empty.jsonl'}"]), tmp_path / "run")


def test_malformed_jsonl_names_the_file_and_line(no_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "a cat", "words": ["cat"]}\n{"id": "b", prompt: "a dog"}\n')
    with pytest.raises(ValueError, match=f"{bad}:2: not a JSON object"):
        run(cfg_for([f"dataset.path={bad}"]), tmp_path / "run")


def test_resolution_the_model_lacks_fails_before_the_model_loads(no_model, tmp_path):
    with pytest.raises(ValueError, match=r"no heads at resolution 7: this model has map sizes \[\d"):
        run(cfg_for([*SMALL, "method.resolutions=7"]), tmp_path / "run")


def test_relevance_file_of_another_model_fails_before_the_model_loads(no_model, tmp_path):
    names = [f"down, layer: 0, head: {h}" for h in range(10)]
    np.save(tmp_path / "vectors.npy", np.ones((1, len(names))))
    np.save(tmp_path / "heads.npy", np.array(names))
    (tmp_path / "concepts.json").write_text('["thing"]')
    overrides = ["relevance=hrv_file", f"relevance.vectors={tmp_path / 'vectors.npy'}",
                 f"relevance.head_names={tmp_path / 'heads.npy'}", f"relevance.concepts={tmp_path / 'concepts.json'}",
                 "relevance.default_concept=thing", "relevance.word_to_concept=null"]
    with pytest.raises(ValueError, match=rf"relevance file {tmp_path / 'heads.npy'}: head names do not match this "
                                         r"model's \d+ heads \(got 10 names"):
        run(cfg_for([*(o for o in SMALL if not o.startswith("relevance.")), *overrides]), tmp_path / "run")


@pytest.mark.parametrize("k, n", [("0.25", 2), (0.25, 2), (1, 1), (1.0, 1), ("1", 1), ("all", 8), ("100%", 8)])
def test_k_has_one_meaning_per_value(k, n):
    """'0.25' reads as 0.25; 1 and 1.0 are both one head (fractions are below 1; all heads: 'all' or '100%')."""
    index = HeadIndex.from_json(json.dumps([{"block": "down", "layer": 0, "n_heads": 8, "resolution": [4, 4],
                                             "processor": "p", "offset": 0}]))
    method = Selective(k, relevance=FixedRelevance(np.arange(8.0)))
    method.check(index)
    (heads, _), = method.heat_maps(torch.rand(8, 4, 4), "w", Context(index, 256, None)).values()
    assert heads == n


# --- batch independence (README: "Batches") ------------------------------------------------------------------

BATCH_TOLERANCE = {"maps_relative": 1e-3, "iou": 1e-3}  # measured: 1.1e-5 and 7e-5 (README, "Batches")


def test_a_sample_does_not_depend_on_its_batch_neighbours_beyond_the_stated_tolerance(tiny, tmp_path):
    """The same (prompt, seed) generated in a batch of 4 and in a batch of 2: its maps agree to the README's
    tolerance, and DAAM's IoU against a fixed mask moves by less than its stated bound."""
    rows = [PromptRow(f"p{i}", p, (w,), {}) for i, (p, w) in enumerate(
        [("a cat on a sofa", "cat"), ("a dog and a ball", "dog"), ("a red bird", "bird"), ("a blue car", "car")])]
    samples = make_samples(rows, [0], token_positions(tiny.tokenizer, rows))
    four = GenerateStore(tmp_path / "b4", {"b": 4}, [])
    two = GenerateStore(tmp_path / "b2", {"b": 2}, [])
    generate_stage(tiny, samples, four, 2, 5.0, batch_size=4)
    generate_stage(tiny, samples[2:], two, 2, 5.0, batch_size=2)
    index = tiny.head_index()
    ref = torch.zeros(tiny.height, tiny.width, dtype=torch.bool)
    ref[32:96, 40:100] = True
    for sample in samples[2:]:
        a, b = four.sample(sample.id), two.sample(sample.id)
        word = sample.row.words[0]
        heat = [mean_of_heads(word_head_maps(s["maps"], index, s["words"][word], tiny.heatmap_size),
                              index.daam_mask(tiny.daam_latent_hw)) for s in (a, b)]
        assert (heat[0] - heat[1]).abs().max() / heat[0].abs().max() < BATCH_TOLERANCE["maps_relative"]
        ious = [float(iou(heat_to_mask(h, ref.shape, 0.4), ref)) for h in heat]
        assert abs(ious[0] - ious[1]) < BATCH_TOLERANCE["iou"]


def test_a_store_item_never_reads_as_another(tmp_path):
    store = StageStore(tmp_path, "x", {}, [])
    store.save_json("a.json", {"v": 1}, owner="a")
    with pytest.raises(ValueError, match="a.json: belongs to 'a', expected 'b'"):
        store.load_json("a.json", owner="b")


def test_an_image_input_keys_generation_by_content(tmp_path):
    """capture.source=image: an image file edited in place (same path) is a new generate key."""
    PIL.Image.new("RGB", (8, 8), "red").save(tmp_path / "im.png")
    (tmp_path / "set.jsonl").write_text('{"id": "a", "prompt": "a cat", "words": ["cat"], "image": "im.png"}\n')
    before = prompt_set_hash(load_prompt_set(tmp_path / "set.jsonl"))
    PIL.Image.new("RGB", (8, 8), "blue").save(tmp_path / "im.png")
    assert prompt_set_hash(load_prompt_set(tmp_path / "set.jsonl")) != before


# --- issue 20: a cache and a run folder no input can turn against their user ------------------------------------


class _Payload:
    """A pickle that creates a file when unpickled: what an adversary plants in a shared cache or run folder."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(path: Path, data: bytes) -> None:
    """Replace an item and forge its record to match (the adversary can write both)."""
    record = json.loads(Path(f"{path}.sum").read_text())
    path.write_bytes(data)
    record.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    Path(f"{path}.sum").write_text(json.dumps(record))


def test_a_planted_pickle_in_the_cache_runs_no_code(baseline, tmp_path, monkeypatch):
    cache, marker = copy_cache(baseline, tmp_path), tmp_path / "pwned"
    victim = items(cache, "generate/*/samples/*.safetensors")[0]
    plant(victim, pickle.dumps({"maps": _Payload(marker)}))
    with pytest.raises(ValueError, match=f"{victim}: not a sample this harness wrote"):
        rerun(baseline, cache, tmp_path / "run", monkeypatch)
    assert not marker.exists()


def test_a_planted_pickle_among_torch_items_runs_no_code(tmp_path):
    """Items that stay torch files (HRV votes) are read with weights_only=True."""
    store, marker = StageStore(tmp_path, "hrv", {}, []), tmp_path / "pwned"
    store.save_torch("votes/000000.pt", {"votes": torch.ones(2)})
    plant(store.file("votes/000000.pt"), pickle.dumps({"votes": _Payload(marker)}))
    with pytest.raises(ValueError, match="votes/000000.pt: holds Python objects besides tensors"):
        store.load_torch("votes/000000.pt")
    assert not marker.exists()


def test_a_planted_pickle_as_overlays_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / OVERLAYS).write_bytes(pickle.dumps({"items": _Payload(marker)}))
    with pytest.raises(ValueError, match="pickled"):
        load_overlays(tmp_path / OVERLAYS)
    assert not marker.exists()


def unsafe_reads(source: str) -> list[int]:
    """Lines of calls that can run a file's code: pickle.load(s), torch.load without weights_only=True,
    anything with allow_pickle=True."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        safe_torch = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
        pickles = isinstance(keywords.get("allow_pickle"), ast.Constant) and keywords["allow_pickle"].value is True
        if name in ("pickle.load", "pickle.loads") or (name == "torch.load" and not safe_torch) or pickles:
            lines.append(node.lineno)
    return lines


def test_no_reader_in_bench_unpickles():
    offenders = [f"{path}:{n}" for path in (REPO / "bench").rglob("*.py") for n in unsafe_reads(path.read_text())]
    assert not offenders, offenders
    example = ("torch.load(f, map_location='cpu',\n weights_only=False)\npickle.loads(b)\n"
               "np.load(p, allow_pickle=True)\ntorch.load(f)\ntorch.load(f, weights_only=True)")
    assert unsafe_reads(example) == [1, 3, 4, 5]  # the check itself can fail


def test_overlays_round_trip_through_npz(tmp_path):
    rng = np.random.default_rng(0)
    item = {"sample_id": "a__s0", "word": "cat", "title": "a s0: cat",
            "image": rng.integers(0, 255, (8, 8, 3), np.uint8),
            "ref": rng.random((8, 8)) > 0.5,
            "maps": {"daam all": {"heat": rng.random((4, 4), np.float32), "mask": rng.random((8, 8)) > 0.5, "tau": 0.4},
                     "selective k=10%": {"heat": rng.random((4, 4), np.float32), "mask": rng.random((8, 8)) > 0.5,
                                         "tau": 0.5}}}
    save_overlays({"items": [item]}, tmp_path / OVERLAYS)
    (back,) = load_overlays(tmp_path / OVERLAYS)["items"]
    assert list(back["maps"]) == list(item["maps"]) and back["title"] == item["title"]
    for key in ("image", "ref"):
        np.testing.assert_array_equal(back[key], item[key])
    for label, cell in item["maps"].items():
        assert back["maps"][label]["tau"] == cell["tau"]
        np.testing.assert_array_equal(back["maps"][label]["heat"], cell["heat"])
        np.testing.assert_array_equal(back["maps"][label]["mask"], cell["mask"])


def test_masks_copied_from_another_segment_key_are_segmented_again(tmp_path, capsys):
    """Same sample id, another key: the record binds stage, key and path, so the copy is caught, not read."""
    mine, other = (MaskStore(tmp_path, {"threshold": t}, ["gen"]) for t in (0.3, 0.5))
    mine.save_masks("a__s0", {"cat": WordMask(np.zeros((4, 4), bool))})
    other.save_masks("a__s0", {"cat": WordMask(np.ones((4, 4), bool))})
    for path in other.path.glob("masks/*"):
        shutil.copyfile(path, mine.path / "masks" / path.name)
    assert not mine.complete("a__s0")
    err = capsys.readouterr().err
    assert f"its record was written for segment/{other.key}/" in err and err.count("warning:") == 1


def test_an_item_copied_from_another_stage_or_path_is_refused(tmp_path):
    gen = StageStore(tmp_path, "generate", {}, [])
    seg = StageStore(tmp_path, "segment", {}, [])
    gen.save_json("samples/a.json", {"v": 1}, owner="a")
    for store, name in ((seg, "samples/a.json"), (gen, "samples/b.json")):
        for suffix in ("", ".sum"):
            target = store.file(name + suffix)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(gen.file("samples/a.json" + suffix), target)
        with pytest.raises(ValueError, match="its record was written for generate/"):
            store.load_json(name, owner="a")


BAD_IDS = {  # JSON value of "id" -> what the one-line error says
    '"../../../../escape_dotdot"': "is not a safe file name",
    '"/etc/escape_absolute"': "is not a safe file name",
    '"sub/dir"': "is not a safe file name",
    '"a\\u0000b"': "is not a safe file name",
    '"' + "x" * 10_000 + '"': r"\.\.\. \(10000 characters\) is not a safe file name",
    '"caf\\u00e9"': "is not a safe file name",
    '".hidden"': "is not a safe file name",
    "1": 'is a JSON int; write every id as a string, e.g. "1"',
    "null": "is a JSON NoneType",
}


@pytest.mark.parametrize("value", BAD_IDS)
def test_a_bad_prompt_id_fails_in_one_line_naming_file_and_line(no_model, tmp_path, value):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(f'{{"id": "ok", "prompt": "a cat", "words": ["cat"]}}\n{{"id": {value}, "prompt": "a dog", '
                   '"words": ["dog"]}\n')
    with pytest.raises(ValueError, match=f"^{bad}:2: id .*{BAD_IDS[value]}") as err:
        run(cfg_for([*SMALL, f"dataset.path={bad}"]), tmp_path / "run")
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


@pytest.mark.parametrize("first, second", [('"1"', '"1"'), ('"Cat"', '"cat"')])
def test_ids_that_collide_as_file_names_fail_naming_both_lines(no_model, tmp_path, first, second):
    bad = tmp_path / "dup.jsonl"
    bad.write_text(f'{{"id": {first}, "prompt": "a cat", "words": ["cat"]}}\n'
                   f'{{"id": {second}, "prompt": "a dog", "words": ["dog"]}}\n')
    with pytest.raises(ValueError, match=f"{bad}:2: id {second.strip(chr(34))!r} repeats the id of line 1"):
        run(cfg_for([*SMALL, f"dataset.path={bad}"]), tmp_path / "run")


def test_an_id_with_dotdot_writes_nothing_outside_the_cache(tmp_path):
    """The issue's case end to end through the CLI: refused in one line, no file anywhere."""
    bad = tmp_path / "data" / "bad.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"id": "../../../../escape_dotdot", "prompt": "a cat", "words": ["cat"]}\n')
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "a" / "b" / "cache"),
           "BENCH_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, "-m", "bench", f"dataset.path={bad}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"error: {bad}:1: id '../../../../escape_dotdot' is not a safe file name: use 1-128 letters, digits, '.', "
        "'_' or '-', starting with a letter or digit"]
    assert not [p for p in tmp_path.rglob("*") if "escape" in p.name]


@pytest.mark.parametrize("name", ["../x.pt", "/abs/x.pt", "a\0b.pt", "samples/../../x.pt", "x" * 300 + ".pt"])
def test_a_store_builds_no_path_outside_its_folder(tmp_path, name):
    store = StageStore(tmp_path / "cache", "generate", {}, [])
    with pytest.raises(ValueError, match="not a relative path inside|too long"):
        store.write(name, b"data", owner="a")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["stage.json"]


def test_a_planted_symlink_cannot_redirect_a_write(tmp_path):
    store = StageStore(tmp_path / "cache", "generate", {}, [])
    (tmp_path / "elsewhere").mkdir()
    (store.path / "samples").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="resolves outside"):
        store.write("samples/a.safetensors", b"data", owner="a")
    assert not list((tmp_path / "elsewhere").iterdir())


def test_repeated_seeds_fail_before_the_model_loads(no_model, tmp_path):
    with pytest.raises(ValueError, match=r"dataset.seeds=\[0, 0\] lists seed\(s\) \[0\] more than once"):
        run(cfg_for([*SMALL, "dataset.seeds=[0,0]"]), tmp_path / "run")


# --- every check in seconds, before torch ---------------------------------------------------------------------


def cli(args: list[str], env: dict | None = None, timeout: int = 120) -> tuple[subprocess.CompletedProcess, bool]:
    """`python -m bench args`, and whether torch was imported by the time it exited."""
    code = ("import atexit, runpy, sys; atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, "
            "file=sys.stderr)); sys.argv = ['bench', *sys.argv[1:]]; runpy.run_module('bench', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    lines = proc.stderr.strip().splitlines()
    proc.stderr = "\n".join(line for line in lines if not line.startswith("torch imported:"))
    return proc, "torch imported: True" in lines


@pytest.mark.parametrize("args", [["--help"], ["eval.tau=1.5"], ["method.k=150%"], ["dataset.seeds=[0,0]"],
                                  ["dataset.path=/nonexistent.jsonl"]])
def test_help_and_bad_values_never_import_torch(tmp_path, args):
    proc, torch_imported = cli([*args, f"paths.cache={tmp_path / 'cache'}", f"paths.runs={tmp_path / 'runs'}"])
    assert not torch_imported, proc.stderr
    if args != ["--help"]:
        assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: ")


def test_every_missing_model_is_named_in_one_line_without_hub_retries(tmp_path):
    # relevance=random: the published HRV files lie outside the repository (absent on a CI checkout)
    proc, torch_imported = cli(["experiment=paper_sdxl", "relevance=random", f"paths.cache={tmp_path / 'cache'}"],
                               env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert not torch_imported and proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    for key in ("model.loader.model_id=stabilityai/stable-diffusion-xl-base-1.0",
                "segmenter.backend.detector=IDEA-Research/grounding-dino-base",
                "segmenter.backend.sam=facebook/sam-vit-huge"):
        assert key in proc.stderr
    assert proc.stderr.startswith("error: 3 model(s), file(s) or package(s) missing") and "Retry" not in proc.stderr


def test_an_unreachable_hub_is_asked_once_per_missing_model(tmp_path):
    """Hub not disabled, nothing listening at its address: each missing model costs one refused request."""
    started = time.monotonic()
    proc, _ = cli(["experiment=paper_sdxl", "relevance=random", f"paths.cache={tmp_path / 'cache'}"],
                  env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert proc.returncode == 1 and "3 model(s), file(s) or package(s) missing" in proc.stderr
    assert "the hub did not provide it" in proc.stderr
    assert time.monotonic() - started < 60 and "Retry" not in proc.stderr  # no back-off (it took ~24 s before)


def test_a_cache_root_that_takes_no_file_fails_in_one_line(monkeypatch, tmp_path):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(StoreWriteError, match=f"cache root {tmp_path / 'c'} is not writable \\(Read-only file system\\)"
                                              ": set paths.cache"):
        check_cache_root(tmp_path / "c", 1.0)


def test_a_cache_root_without_free_space_fails_in_one_line(tmp_path):
    with pytest.raises(StoreWriteError, match=r"GiB free, below paths.min_free_gb=1000000000: free disk space"):
        check_cache_root(tmp_path, 1_000_000_000)


# --- interrupted runs leave nothing that reads as a result ----------------------------------------------------


def test_sigterm_removes_the_run_folder_like_ctrl_c(baseline, tmp_path):
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache"), "BENCH_RUNS_DIR": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "bench", *SMALL, f"dataset.path={baseline / 'data' / 'prompts.jsonl'}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "cache").glob("generate/*/samples/*.safetensors.sum")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    assert "stopped by signal SIGTERM" in proc.stderr.read()
    assert not list((tmp_path / "runs").iterdir())  # only Hydra's files were there: removed
    assert not list((tmp_path / "cache").rglob(".*.tmp-*"))


def test_a_stopped_run_with_results_is_marked_and_never_read_as_one(baseline, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        shutil.copytree(baseline / "run", sweep / job)
    stopped(sweep / "1", KeyboardInterrupt("stopped by signal SIGTERM"), remove=True)
    assert (sweep / "1" / INCOMPLETE).read_text().startswith("stopped before it finished: KeyboardInterrupt")
    assert job_dirs(sweep) == [sweep / "0"]
    with pytest.raises(ValueError, match=r"jobs 1 finished, 1 failed \(#1: stopped before it finished"):
        report_dir(sweep, figures=False)
    report_dir(sweep, figures=False, partial=True)
    assert "jobs: 1 finished, 1 failed (#1: stopped before it finished" in capsys.readouterr().out
    with pytest.raises(ValueError, match="stopped before it finished.*rerun it"):
        report_dir(sweep / "1", figures=False)


def test_quoted_errors_are_never_cut_mid_word():
    long = "x " * 300 + "the end\nsecond line"
    assert brief(ValueError(long)) == " ".join(long.splitlines()[0].split())
    err = unavailable_error("SAM", "facebook/sam-vit-huge", "sam", False, OSError(long))
    assert "the end" in str(err) and "second line" not in str(err)


def test_a_linked_item_reads_as_its_own_with_its_own_record(tmp_path):
    """`link` (synthetic benchmarks reuse one sample under many ids): same bytes, its own owner and path."""
    store = StageStore(tmp_path, "segment", {}, [])
    store.save_json("masks/pool0.json", {"v": 1}, owner="pool0")
    store.link("masks/s0001.json", "masks/pool0.json", "s0001")
    assert store.load_json("masks/s0001.json", owner="s0001") == {"v": 1}
    assert json.loads(store.file("masks/s0001.json.sum").read_text())["path"] == "masks/s0001.json"
    with pytest.raises(ValueError, match="belongs to 'pool0', expected 's0001'"):
        store.load_json("masks/pool0.json", owner="s0001")


def test_a_missing_model_costs_one_hub_request_however_many_jobs_name_it(monkeypatch, tmp_path):
    """check_jobs runs preflight per job, and run() repeats it: the hub is asked once per model per process."""
    import huggingface_hub

    from bench import checks

    calls = []

    def refuse(repo_id, timeout):
        calls.append(repo_id)
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "model_info", refuse)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    checks._hub_refuses.cache_clear()
    cfg = OmegaConf.create({"model": {"loader": {"model_id": "nobody/absent-model"}}})
    for _ in range(3):
        with pytest.raises(ModelUnavailableError, match="nobody/absent-model .* the hub did not provide it"):
            checks.check_models(cfg)
    assert calls == ["nobody/absent-model"]
    checks._hub_refuses.cache_clear()
