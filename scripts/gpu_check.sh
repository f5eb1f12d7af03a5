#!/usr/bin/env bash
# GPU dress rehearsal of the paper pipeline (issue 12): ONE call, at most ~8 min on one H100/H200 with no network.
#
# Phases, each guarded by its own time limit (a failing or slow phase never loses the others' results):
#   setup      install the carried pure-Python wheels (`make gpu-wheels` builds .gpu_wheels/; torch is never touched)
#   gpu_tests  the CUDA tests: capture vs the float64 eager reference in fp16, image invariance, no syncs inside
#              the denoising loop, parity with daam.trace in fp16 (pytest -m gpu, tiny_sdxl on the GPU)
#   perf       bench.perf on sdxl_random, fp16, 1024 px, batch 1 and 4, at 20 steps (with daam.trace) and 50 steps
#   pipeline   `python -m bench experiment=paper_sdxl_sweep` (one job, relevance=random) on sdxl_random at 1024 px,
#              10 steps, 16 COCO-80 prompts x 2 seeds, full-size random Grounded-SAM (Swin-B + ViT-H): per-stage seconds,
#              peak GPU memory, bytes stored, and the projected time and disk of `make bench EXP=paper_sdxl_sweep`
#   hrv_start_token_share  per-layer share of the start token in HRV's voting softmax (issue 15), sdxl_random,
#              2 probe prompts x 5 PNDM steps in fp32, in the time the pipeline leaves (it stops 60 s early)
#              -> OUT/hrv_start_share_<card>.csv
# After every phase, OUT/gpu_rehearsal_<card>.json and .md are rewritten from what has finished; perf writes
# OUT/perf_<card>_<N>steps.json/.md. OUT is $OUT (the device tool's output folder) if set, else results/reference.
#
# GPU_CHECK_DRY=1: the same phases on CPU in a few minutes (tiny_sdxl, grounded_sam_tiny, 2-3 steps, card
# "dry_cpu", the local .venv, no wheels): proves the script end to end where no GPU is lent.
# Overridable: PY, WHEELS, OUT, WORK, BUDGET (seconds for all phases), CARD.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
DRY=${GPU_CHECK_DRY:-0}
OUT_DIR=${OUT:-results/reference}
WORK=${WORK:-/tmp/gpu_check}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DRY" = 1 ]; then
  PY=${PY:-.venv/bin/python}
  BUDGET=${BUDGET:-600}  # a shared 2-core CPU is slower than the GPU machine, whatever the model size
  PERF=(model=tiny_sdxl dataset=smoke --batch-sizes 1 2 --steps 2 3 --runs 1 --warmup 0 --runs-at 3:1
        --daam-steps 2 --threads 1)
  PIPE=(model=tiny_sdxl dataset=smoke segmenter=grounded_sam_tiny model.generation.steps=2 dataset.limit=4
        'dataset.seeds=[0]')
  HRV=(model=tiny_sdxl relevance=hrv_upstream relevance.probe_limit=2 relevance.steps=2)
  CARD=${CARD:-dry_cpu}
else
  PY=${PY:-python3}
  BUDGET=${BUDGET:-480}  # 8 minutes; the device tool's command limit is 10
  PERF=(model=sdxl_random dataset=coco80 --batch-sizes 1 4 --steps 20 50 --runs 3 --warmup 1 --runs-at 50:2
        --daam-steps 20)
  # 10 steps: the projection takes generation's cost from perf at 50 steps; scoring on 8 of the 16 cores
  PIPE=(model=sdxl_random segmenter=grounded_sam_random model.generation.steps=10 dataset.limit=16
        'dataset.seeds=[0,1]' eval.workers=8)
  HRV=(model=sdxl_random relevance=hrv_upstream relevance.probe_limit=2 relevance.steps=5)
fi
WHEELS=${WHEELS:-.gpu_wheels}
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT_DIR"
export BENCH_CACHE_DIR="$WORK/cache" BENCH_RUNS_DIR="$WORK/runs" TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"

left() { echo $(( BUDGET - ($(date +%s) - start) )); }
card_name() {  # "NVIDIA H200" -> h200, "NVIDIA H100 80GB HBM3" -> h100
  "$PY" -c "import re, torch; n = torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'; \
print(re.sub(r'[^a-z0-9]+', '_', re.sub(r'^nvidia ', '', n.lower()).split()[0]).strip('_'))"
}
report() { "$PY" -m bench.rehearsal report --work "$WORK" --out "$OUT_DIR" --card "$CARD" --budget "$BUDGET" \
  >"$WORK/report.log" 2>&1 || { echo "warning: the report failed:"; tail -5 "$WORK/report.log"; }; }
# run_phase NAME LIMIT_S CMD...: runs CMD under `timeout`, logs to WORK/NAME.log, records the status, reports
run_phase() {
  local name=$1 limit=$2; shift 2
  local t0 rc status
  t0=$(date +%s)
  if [ "$limit" -lt 20 ]; then
    echo "== $name: skipped, ${limit} s left of the ${BUDGET} s budget"
    "$PY" -m bench.rehearsal phase --work "$WORK" --name "$name" --status "skipped (no time left)" --seconds 0
    report; return
  fi
  echo "== $name (at most ${limit} s; $(( $(date +%s) - start )) s elapsed)"
  if [ "$(type -t "$1")" = function ]; then  # a function of this script (setup): `timeout` runs programs only
    "$@" >"$WORK/$name.log" 2>&1; rc=$?
  else
    timeout "$limit" "$@" >"$WORK/$name.log" 2>&1; rc=$?
  fi
  tail -25 "$WORK/$name.log"
  case $rc in 0) status=ok ;; 124) status="timed out after ${limit} s" ;; *) status="failed (exit $rc)" ;; esac
  # the pipeline phase records its own result when it succeeds; every other outcome is recorded here
  if [ "$name" != pipeline ] || [ "$rc" != 0 ]; then
    "$PY" -m bench.rehearsal phase --work "$WORK" --name "$name" --status "$status" \
      --seconds $(( $(date +%s) - t0 )) --log "$WORK/$name.log"
  fi
  echo "== $name: $status in $(( $(date +%s) - t0 )) s"
  report
}

setup() {
  if [ "$DRY" = 1 ]; then "$PY" -V; else source scripts/gpu_setup.sh || return $?; fi
  "$PY" -c "import torch, diffusers, transformers, daam, bench.perf, bench.rehearsal; \
print('torch', torch.__version__, '| CUDA', torch.version.cuda, torch.cuda.is_available(), '| diffusers', \
diffusers.__version__, '| transformers', transformers.__version__, '| daam', daam.__version__)"
}
"$PY" -c "import spacy" 2>/dev/null || export PYTHONPATH="$PWD/scripts/offline_stubs:$PYTHONPATH"
CARD=${CARD:-$(card_name)}  # torch is preinstalled there; the wheels add only pure-Python packages
run_phase setup 120 setup

# time caps: perf leaves >= 160 s to the pipeline and the HRV share (which gets what the pipeline leaves); each
# report after a phase takes a few seconds. Expected on an H200: setup ~30 s, gpu_tests ~70 s (first torch.compile
# included), perf ~230 s (model build ~40-60 s, 20 steps x 4 repetitions with daam, 50 steps x 2, profile),
# pipeline ~100 s
run_phase gpu_tests "$(( $(left) < 90 ? $(left) : 90 ))" \
  "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider tests/test_capture.py tests/test_perf.py tests/test_daam_parity.py

run_phase perf "$(( $(left) - 160 < 250 ? $(left) - 160 : 250 ))" \
  "$PY" -m bench.perf "${PERF[@]}" --profile --out "$OUT_DIR" --tag "$CARD"

run_phase pipeline "$(( $(left) - 60 ))" \
  "$PY" -m bench.rehearsal pipeline --work "$WORK" -- experiment=paper_sdxl_sweep relevance=random "${PIPE[@]}"

# issue 15: the start token's share of the HRV voting softmax per attn2 layer, on sdxl_random at 1024 px with the
# upstream preset's generation (PNDM, fp32, CFG 7.5), a few probe prompts (the share is a property of the layers)
run_phase hrv_start_token_share "$(( $(left) - 5 ))" \
  "$PY" -m bench.hrv "${HRV[@]}" --out "$OUT_DIR/hrv_start_share_$CARD.csv"

echo "== done in $(( $(date +%s) - start )) s; files in $OUT_DIR:"
ls -l "$OUT_DIR" | grep -E "gpu_rehearsal_$CARD|perf_${CARD}_" || true
cat "$OUT_DIR/gpu_rehearsal_$CARD.md" 2>/dev/null
