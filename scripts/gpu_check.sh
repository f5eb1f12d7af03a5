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

source scripts/gpu_setup.sh
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
