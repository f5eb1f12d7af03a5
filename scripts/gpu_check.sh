#!/usr/bin/env bash
# GPU performance check (issue 7): sdxl_random (SDXL base 1.0 at full size, seeded random weights, built on the GPU)
# at 1024 px fp16, batch 1 and 4: plain generation vs our capture vs daam.trace, with a profile of the capture call.
#
# For one H100/H200 with no network and PyTorch preinstalled: on a machine with pip access first run
# `make gpu-wheels` (pure-Python wheels into .gpu_wheels/, ~20 MiB), carry that folder, then run
# `bash scripts/gpu_check.sh`. It installs the wheels with --no-index --no-deps (torch is never touched, and a package
# already there is kept), prints what it found, and writes perf_<gpu>.json/.md into $OUT (the device tool's output
# folder) if set, else results/reference/. About 4-5 min on an H100 (model init ~1 min); it stops itself at 7.5 min.
# Overridable: PY, WHEELS, MODEL, STEPS, RUNS, WARMUP, BATCH_SIZES, PERF_TIMEOUT (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WHEELS=${WHEELS:-.gpu_wheels}
OUT_DIR=${OUT:-results/reference}
MODEL=${MODEL:-sdxl_random}
STEPS=${STEPS:-20}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-1}
BATCH_SIZES=${BATCH_SIZES:-1 4}
PERF_TIMEOUT=${PERF_TIMEOUT:-390}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg BENCH_CACHE=${BENCH_CACHE:-/tmp/bench_cache}
start=$(date +%s)
mkdir -p "$OUT_DIR"

echo "== found"
"$PY" -V
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'PYEOF'
import importlib.metadata as md
names = ["torch", "numpy", "pillow", "scipy", "matplotlib", "pandas", "transformers", "huggingface_hub", "tokenizers",
         "safetensors", "diffusers", "daam", "hydra-core", "omegaconf", "open_clip_torch", "spacy"]
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "-"
print("packages: " + ", ".join(f"{n} {version(n)}" for n in names))
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
PYEOF

echo "== install from $WHEELS (no index, no deps)"
if [ ! -d "$WHEELS" ]; then echo "error: $WHEELS is missing: run 'make gpu-wheels' where pip works and carry it" >&2; exit 2; fi
torch_before=$("$PY" -c "import torch; print(torch.__version__, torch.__file__)")
names=$(ls "$WHEELS" | grep -E '\.whl$' | sed -E 's/-.*//' | tr '\n' ' ')
"$PY" -m pip install --no-index --find-links "$WHEELS" --no-deps --disable-pip-version-check $names 2>&1 \
  | grep -vE '^\s*$' || true
torch_after=$("$PY" -c "import torch; print(torch.__version__, torch.__file__)")
if [ "$torch_before" != "$torch_after" ]; then echo "error: torch changed ($torch_before -> $torch_after)" >&2; exit 3; fi
if ! "$PY" -c "import spacy" 2>/dev/null; then
  echo "spaCy is not installed: using the stand-in in scripts/offline_stubs (daam imports it; trace never uses it)"
  export PYTHONPATH="$PWD/scripts/offline_stubs${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import diffusers, transformers, daam, bench.perf; print('imports ok: diffusers', diffusers.__version__, \
'| transformers', transformers.__version__, '| daam', daam.__version__)"
echo "setup took $(( $(date +%s) - start )) s"

echo "== gpu test: the capture adds no CUDA stream synchronisations (tiny_sdxl)"
"$PY" -m pytest -q -m gpu tests/test_perf.py -p no:cacheprovider 2>&1 | tail -3 || true

echo "== perf: $MODEL, batch sizes $BATCH_SIZES, $STEPS steps, $RUNS runs after $WARMUP warm-up"
status=0
timeout "$PERF_TIMEOUT" "$PY" -m bench.perf "model=$MODEL" dataset=coco80 --batch-sizes $BATCH_SIZES \
  --steps "$STEPS" --runs "$RUNS" --warmup "$WARMUP" --profile --out "$OUT_DIR" || status=$?
[ "$status" = 124 ] && echo "error: bench.perf ran past ${PERF_TIMEOUT} s; rerun with fewer RUNS or STEPS" >&2
echo "== done in $(( $(date +%s) - start )) s (exit $status); files in $OUT_DIR:"
ls -l "$OUT_DIR"
exit "$status"
