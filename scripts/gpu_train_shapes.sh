#!/usr/bin/env bash
# Train the shapes-world model for several seeds at once on one GPU with the shipped CPU recipe (the trainer's
# defaults, STEPS steps: the same models `make train-shapes SEED=<s>` trains on two CPU cores, up to floating-point
# order), then evaluate every seed with the harness (scripts/shapes_world.py), writing models and metrics to $OUT,
# all inside one call meant to take ~9 minutes (not yet run on a GPU with this recipe: not measured).
#
# For one H100/H200 with no network and PyTorch preinstalled: carry .gpu_wheels (`make gpu-wheels`) and run
# `bash scripts/gpu_train_shapes.sh`. Training runs STEPS steps per seed, all seeds in parallel, one process each,
# time-boxed by TRAIN_MINUTES (a seed stopped by the box exports nothing: rerun resumes it); evaluation is
# time-boxed by EVAL_TIMEOUT seconds; the models are packed into $OUT before the evaluation starts, so they come
# back even if it runs out of time.
# $OUT receives at most 8 files: model_seed_<s>.tar per seed (unpack into data/shapes/models/seed_<s> to ship one),
# shapes_world.json / .md (results/reference/), runs.tar.gz (train logs, per-seed summaries, head diagnostics,
# fidelity) and gpu_train_shapes.log.
#
# DRY_RUN=1: the same pipeline on the CPU in a few minutes (3 steps of batch 8, 12 eval scenes x 1 seed, 4
# sampling steps, no wheels needed) to prove it end to end. Overridable: PY, WHEELS, SEEDS, TRAIN_MINUTES, STEPS,
# BATCH, WORKERS (per seed), LR, RECIPE (model / schedule flags), EVAL_DEVICE, EVAL_TIMEOUT, EVAL_OVERRIDES.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
PY=${PY:-$([ "${DRY_RUN:-0}" = 1 ] && echo .venv/bin/python || echo python3)}
WHEELS=${WHEELS:-.gpu_wheels}
OUT_DIR=${OUT:-/tmp/gpu_train_shapes_out}
WORK=${WORK:-/tmp/gpu_train_shapes}
SEEDS=${SEEDS:-0 1 2}
# extra model / schedule flags (default none: the shipped recipe, bench.shapes.train's defaults)
RECIPE=${RECIPE:-}
if [ "${DRY_RUN:-0}" = 1 ]; then
  DEVICE=cpu; TRAIN_MINUTES=${TRAIN_MINUTES:-2}; STEPS=${STEPS:-3}; BATCH=${BATCH:-8}; WORKERS=${WORKERS:-1}
  LR=${LR:-2e-3}; EVAL_DEVICE=${EVAL_DEVICE:-cpu}; EVAL_TIMEOUT=${EVAL_TIMEOUT:-900}
  EVAL_OVERRIDES=${EVAL_OVERRIDES:-dataset.build.n_scenes=12 dataset.seeds=[0] model.generation.steps=4 eval.workers=1}
  JOBS=${JOBS:-3}
else
  DEVICE=cuda; TRAIN_MINUTES=${TRAIN_MINUTES:-5}; STEPS=${STEPS:-4000}; BATCH=${BATCH:-32}; WORKERS=${WORKERS:-4}
  LR=${LR:-2e-3}; EVAL_DEVICE=${EVAL_DEVICE:-cuda}; EVAL_TIMEOUT=${EVAL_TIMEOUT:-200}
  EVAL_OVERRIDES=${EVAL_OVERRIDES:-eval.workers=4}
  JOBS=${JOBS:-3}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export BENCH_CACHE_DIR=${BENCH_CACHE_DIR:-$WORK/stages} PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR" "$WORK"
exec > >(tee "$OUT_DIR/gpu_train_shapes.log") 2>&1

if [ "$DEVICE" = cuda ]; then source scripts/gpu_setup.sh || exit $?; else echo "== dry run on the CPU: no wheels installed"; fi
"$PY" -c "import diffusers, transformers, hydra, bench.shapes.train; print('imports ok: diffusers', diffusers.__version__, \
'| transformers', transformers.__version__)"
echo "setup took $(( $(date +%s) - start )) s"

echo "== train seeds [$SEEDS] on $DEVICE: $STEPS steps of batch $BATCH (time box $TRAIN_MINUTES min), lr $LR, $WORKERS workers each; ${RECIPE:-shipped recipe}"
"$PY" -m bench.shapes.train --device "$DEVICE" --seeds $SEEDS --out "$WORK/models" --work "$WORK/train" \
  --minutes "$TRAIN_MINUTES" --steps "$STEPS" --batch "$BATCH" --lr "$LR" --workers "$WORKERS" --no-samples \
  --log-every 100 --checkpoint-minutes 100 $RECIPE
for s in $SEEDS; do tar -cf "$OUT_DIR/model_seed_$s.tar" -C "$WORK/models/seed_$s" .; done
echo "training done at $(( $(date +%s) - start )) s; models packed into $OUT_DIR"

echo "== evaluate every seed (scripts/shapes_world.py, $JOBS at once, model on $EVAL_DEVICE, timeout $EVAL_TIMEOUT s)"
models=(); for s in $SEEDS; do models+=("$WORK/models/seed_$s"); done
overrides=(--override "model.loader.device=$EVAL_DEVICE"); for o in $EVAL_OVERRIDES; do overrides+=(--override "$o"); done
status=0
timeout "$EVAL_TIMEOUT" "$PY" scripts/shapes_world.py "${models[@]}" --seeds $SEEDS --default-seed "${SEEDS%% *}" \
  --jobs "$JOBS" --out "$OUT_DIR/shapes_world" --work "$WORK/eval" "${overrides[@]}" \
  --note "trained by scripts/gpu_train_shapes.sh on $DEVICE ($STEPS steps of batch $BATCH per seed, seeds in parallel); \
eval overrides: ${EVAL_OVERRIDES:-none}" || status=$?
[ "$status" = 124 ] && echo "error: the evaluation ran past $EVAL_TIMEOUT s: rerun scripts/shapes_world.py on the models" >&2
tar -czf "$OUT_DIR/runs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='scores.csv' --exclude='fig_*.png' train eval \
  2>/dev/null || true
echo "== done in $(( $(date +%s) - start )) s (exit $status); files in $OUT_DIR:"
ls -l "$OUT_DIR"
exit "$status"
