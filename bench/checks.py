"""Checks that need neither torch nor a model: `preflight(cfg)` runs them in seconds, before `bench.run` (and with
it torch and diffusers) is imported, so a bad value, a bad prompt id or a missing model fails in one line.

What it checks: every config value that does not depend on the model's heads (tau, workers, shard, seeds,
limit, each selective method's k / order / blocks / resolutions), the prompt set (JSON, ids, duplicates; a set
built by `dataset.build` is checked when it is built), the cache root (writable, `paths.min_free_gb` free), and
every model and file the config names (`MODEL_KEYS`): a local path must exist, a Hugging Face id must be in the
local cache or the hub must answer; a backend's packages must be installed (`PACKAGES`); all that are missing
are named in one message. Values that depend on the heads (k larger than the head group, a block the model
lacks) are checked by `bench.run` from the UNet's config.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from bench import BLOCKS, ModelUnavailableError, StoreWriteError
from bench.prompts import load_prompt_set
from bench.samples import parse_shard

SELECTIVE_TARGETS = ("bench.evaluate.Selective", "bench.evaluate.KCurve")  # method nodes checked here
HUB_TIMEOUT_S = 3  # one request per missing model, no retries


# run folders are `<time>_<pid>-<random>` (conf/config.yaml), so two runs started in the same second never
# share one; cached per config, so every job of a multirun resolves the same sweep folder. Registered here, the
# first module the CLI imports, because Hydra resolves the run folder before `main` runs.
OmegaConf.register_new_resolver("unique", lambda: f"{os.getpid()}-{uuid.uuid4().hex[:6]}", use_cache=True,
                                replace=True)


def preflight(cfg: DictConfig) -> None:
    """Every check of this module on the composed config; the first failure is a one-line user error."""
    check_seeds(cfg.dataset.seeds)
    check_limit(cfg.dataset.get("limit"))
    parse_shard(cfg.get("shard"))
    check_taus(cfg.eval.tau)
    check_workers(cfg.eval.workers)
    for name, node in cfg.method.methods.items():
        if node.get("_target_") in SELECTIVE_TARGETS:
            check_selective(node.get("k", "all"), node.get("order", "top"), node.get("blocks"),
                            node.get("resolutions"), f"method.methods.{name}")
    if not cfg.dataset.get("build"):
        load_prompt_set(cfg.dataset.path, cfg.dataset.get("limit"))
    check_cache_root(cfg.paths.cache, cfg.paths.get("min_free_gb", 1.0))
    check_models(cfg)


# --- values ---------------------------------------------------------------------------------------------------


def check_seeds(seeds: Any) -> list[int]:
    """dataset.seeds: whole numbers >= 0, each once (a repeated seed would score every sample twice)."""
    values = list(seeds) if isinstance(seeds, (list, tuple, ListConfig)) else [seeds]
    if not values or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in values):
        raise ValueError(f"dataset.seeds must be a list of whole numbers >= 0, e.g. [0, 1, 2]; got {seeds}")
    repeated = sorted({s for s in values if values.count(s) > 1})
    if repeated:
        raise ValueError(f"dataset.seeds={list(values)} lists seed(s) {repeated} more than once: list each seed once")
    return [int(s) for s in values]


def check_limit(limit: Any) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"dataset.limit must be a whole number >= 1 or null, got {limit!r}")


def check_taus(tau: float | list[float]) -> list[float]:
    """eval.tau (one value or a list) as floats, each in [0, 1] (thresholds of min-max-normalised maps)."""
    taus = list(tau) if isinstance(tau, (list, tuple, ListConfig)) else [tau]
    try:
        values = [float(t) for t in taus]
    except (TypeError, ValueError):
        values = [float("nan")]
    if not values or not all(0 <= t <= 1 for t in values):
        raise ValueError(f"eval.tau must be one value or a list of values in [0, 1], got {tau}")
    return values


def check_workers(workers: int) -> None:
    """eval.workers: the number of scoring threads, a whole number >= 1."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"eval.workers must be a whole number >= 1, got {workers!r}")


def parse_k(k: int | float | str) -> int | float:
    """One k of a config as a head count (int) or a share of the available heads (float in (0, 1]).

    One meaning for every spelling: a number >= 1 is a count (1 and 1.0 both mean one head; 2.5 is an
    error), a number in (0, 1) a share, 'N%' a percentage, 'all' every head; strings of numbers read as
    the numbers ('10', '0.25').
    """
    text = str(k).strip()
    if text == "all":
        return 1.0
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = float("nan")
    if text.endswith("%") and 0 < value <= 1:
        return value
    if not text.endswith("%") and 0 < value < 1:
        return value
    if not text.endswith("%") and value >= 1 and value == int(value):
        return int(value)
    raise ValueError(f"k={k!r} is not a head count >= 1, a fraction in (0, 1), a percentage in (0%, 100%] or "
                     "'all' (e.g. 10, 0.25, '25%')")


def check_selective(k: Any, order: str, blocks: Any, resolutions: Any, where: str = "method"
                    ) -> tuple[list, list[str] | None, list[int] | None]:
    """A selective method's values as (k list, blocks or None for all, resolutions or None for all); one-line
    ValueError naming `where` otherwise."""
    if order not in ("top", "bottom"):
        raise ValueError(f"{where}: order must be top or bottom, got {order!r}")
    ks = [k] if isinstance(k, (int, float, str)) else list(k)
    for one in ks:
        parse_k(one)
    blocks = [blocks] if isinstance(blocks, str) else blocks
    blocks = list(blocks) if blocks and list(blocks) != ["all"] else None
    unknown = [b for b in blocks or [] if b not in BLOCKS]
    if unknown:
        raise ValueError(f"method.blocks: unknown block(s) {unknown}; use any of {list(BLOCKS)} or all")
    sides = [resolutions] if isinstance(resolutions, int) else list(resolutions) if resolutions else None
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in sides or []):
        raise ValueError(f"method.resolutions must be map sides (whole numbers, e.g. 32), got {resolutions}")
    return ks, blocks, sides


# --- the cache root -------------------------------------------------------------------------------------------


def check_cache_root(root: str | Path, min_free_gb: float) -> None:
    """The cache root exists or can be created, takes a file, and has `min_free_gb` free."""
    root = Path(root)
    fix = "set paths.cache (or BENCH_CACHE_DIR) to a writable folder"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-check-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise StoreWriteError(f"cache root {root} is not writable ({err.strerror or type(err).__name__}): "
                              f"{fix}") from None
    free_gb = shutil.disk_usage(root).free / 2**30
    if free_gb < min_free_gb:
        raise StoreWriteError(f"cache root {root} has {free_gb:.2f} GiB free, below paths.min_free_gb={min_free_gb}: "
                              f"free disk space or {fix}")


# --- models ---------------------------------------------------------------------------------------------------

# config keys that name a model: key -> (what it is, the file a Hugging Face folder of it must hold)
MODEL_KEYS = {
    "model.loader.model_id": ("text-to-image pipeline", "model_index.json"),
    "model.loader.vae_id": ("VAE", "config.json"),
    "model.loader.path": ("shapes model folder", None),
    "segmenter.backend.detector": ("GroundingDINO", "config.json"),
    "segmenter.backend.sam": ("SAM", "config.json"),
    "segmenter.backend.text_encoder": ("GroundingDINO's text encoder", "config.json"),
    "segmenter.backend.groundingdino_checkpoint": ("GroundingDINO checkpoint", None),
    "segmenter.backend.sam_checkpoint": ("SAM checkpoint", None),
    "relevance.vectors": ("relevance file (the published HRV vectors: README)", None),
    "relevance.head_names": ("relevance file (the published HRV head names: README)", None),
    "relevance.concepts": ("relevance file (the published HRV concepts: README)", None),
}


# backends that need packages outside the default environment: `_target_` -> (import names, the fix)
GSAM_ENV_FIX = "run `make test-gsam` (builds .venv-gsam) and use .venv-gsam/bin/python -m bench"
PACKAGES = {
    "bench.grounded_sam_original.OriginalGrounding": (("groundingdino", "segment_anything", "torchvision"),
                                                      GSAM_ENV_FIX),
}


def looks_like_path(name: str) -> bool:
    """A model name that is a local path rather than a Hugging Face id."""
    return name.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(name))


def check_models(cfg: DictConfig) -> None:
    """Every model, file and backend package the config names is there (a model on disk, in the local Hugging Face
    cache, or on a hub that answers); all missing ones in one ModelUnavailableError with the fix."""
    missing = []
    for key in ("model.loader", "segmenter", "segmenter.backend"):
        node = OmegaConf.select(cfg, key)
        packages, fix = PACKAGES.get(node.get("_target_") if isinstance(node, DictConfig) else None, ((), ""))
        absent = [name for name in packages if importlib.util.find_spec(name) is None]
        if absent:
            missing.append(f"{key}={node._target_} needs package(s) {', '.join(absent)}, not installed here: {fix}")
    for key, (what, marker) in MODEL_KEYS.items():
        name = OmegaConf.select(cfg, key)
        if not isinstance(name, str) or not name:  # unset, or given inline (a relevance's concepts as a mapping)
            continue
        if marker is None or looks_like_path(name):
            if not os.path.exists(os.path.expanduser(name)):
                missing.append(f"{what} {key}={name} does not exist (set {key}= to the local file or folder)")
        elif not _cached(name, marker):
            offline = hub_offline(OmegaConf.select(cfg, key.rpartition(".")[0] + ".local_files_only"))
            reason = "the hub is off (HF_HUB_OFFLINE or local_files_only)" if offline else _hub_refuses(name)
            if reason:
                missing.append(f"{what} {key}={name} is not in the local Hugging Face cache and {reason} "
                               f"(on a machine with network: hf download {name}; or set {key}=/path/to/a/local/copy)")
    if missing:
        raise ModelUnavailableError(f"{len(missing)} model(s), file(s) or package(s) missing: " + "; ".join(missing))


def brief(err: BaseException) -> str:
    """An exception's first line, whitespace collapsed, never cut: what a one-line error quotes of it."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[0].split()) if lines else type(err).__name__


def hub_offline(local_files_only: bool | None = None) -> bool:
    """A loader's `local_files_only`: as given, or (None) True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set."""
    if local_files_only is not None:
        return bool(local_files_only)
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=None)  # a sweep's jobs name the same models: look each up once
def _cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except ValueError:  # not a valid repo id
        return False


@functools.lru_cache(maxsize=None)  # one hub request per model per process, however many jobs name it
def _hub_refuses(repo_id: str) -> str | None:
    """None when the hub answers for `repo_id` (the run will download it); otherwise why not, in a few words."""
    from huggingface_hub import model_info

    try:
        model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - unreachable, unknown, gated: the same to the user, named by its type
        return f"the hub did not provide it ({type(err).__name__})"
    return None
