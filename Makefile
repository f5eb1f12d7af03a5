# Selective aggregation vs DAAM: benchmark harness. `make help` lists the targets.
SHELL := /bin/bash
PY_SYS ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
SHAPES_EXP := shapes_image shapes_generated
EXP ?= $(SHAPES_EXP)
DIR ?=
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-gsam test-slow slurm-up slurm-down test-slurm smoke run bench train-shapes train-shapes-all report bench-kcurve lint clean-cache perf gpu-wheels gpu-check gpu-train-shapes

help:  ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(PY):
	$(PY_SYS) -m venv $(VENV)

setup: $(PY)  ## create .venv: CPU torch (pinned), the harness, test deps, daam and open_clip (--no-deps; its BPE file is the offline CLIP tokenizer)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,daam]"
	$(PY) -m pip install -q --no-deps daam==0.2.0 open_clip_torch==3.3.0
	@$(PY) -c "import torch, diffusers, transformers, daam; print('ready: torch', torch.__version__, '| diffusers', diffusers.__version__, '| transformers', transformers.__version__)"

test:  ## the fast suite CI runs (under 10 minutes on 2 CPU cores)
	$(PY) -m pytest -q

GSAM_VENV ?= .venv-gsam
GSAM_PY := $(GSAM_VENV)/bin/python
# measured to work together (../shared/ENVIRONMENT.md): torchvision needs this torch build; groundingdino-py
# needs transformers < 5, which caps huggingface_hub < 1.0, which diffusers 0.39.0 is the newest to accept
GSAM_PINS := transformers==4.57.6 huggingface_hub==0.36.2 diffusers==0.39.0

$(GSAM_PY):
	$(PY_SYS) -m venv $(GSAM_VENV)

test-gsam: $(GSAM_PY)  ## build .venv-gsam (groundingdino-py + segment-anything + torchvision, ~6.5 GB) and run the segmenter tests there
	$(GSAM_PY) -m pip install -q --upgrade pip
	$(GSAM_PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(GSAM_PY) -m pip install -q $(GSAM_PINS) -e ".[test,gsam_original]"
	HF_HUB_OFFLINE=1 $(GSAM_PY) -m pytest -q -rs tests/test_grounded_sam_original.py tests/test_grounded_sam.py

test-slow:  ## the slower end-to-end checks
	$(PY) -m pytest -q -m slow

slurm-up:  ## a single-node Slurm with accounting on this machine (root; installs Debian's packages when missing)
	scripts/slurm_local.sh up

slurm-down:  ## stop exactly the Slurm daemons slurm-up started
	scripts/slurm_local.sh down

test-slurm:  ## sweeps through the real Slurm of slurm-up (submitit_slurm_cpu launcher)
	$(PY) -m pytest -q -m slurm tests/test_slurm.py

smoke:  ## tiny_sdxl, 6 prompts x 2 seeds, CPU, offline: checks the whole pipeline (its numbers mean nothing)
	$(PY) -m bench experiment=smoke $(ARGS)

run:  ## python -m bench in the venv, e.g. make run ARGS="experiment=shapes_image relevance=oracle"; ARGS=--help lists the options
	$(PY) -m bench $(ARGS)

bench:  ## full sweep of each experiment in EXP (default: the shapes world, both modes; offline, CPU) -> results/runs/multirun_*/
	@echo "make bench: experiments [$(EXP)]$(if $(filter-out $(SHAPES_EXP),$(EXP)),, (the offline shapes world, both modes: about 2-3 min on an idle 2-core CPU, longer under load)); the SDXL paper setting: make bench EXP=paper_sdxl_sweep on a GPU"
	@verdicts=$$(mktemp); trap 'rm -f $$verdicts' EXIT; \
	for exp in $(EXP); do BENCH_VERDICTS=$$verdicts $(PY) -m bench -m experiment=$$exp $(ARGS) || exit 1; done; \
	printf '\n==== make bench: the verdict of each sweep just run ====\n'; cat $$verdicts; \
	case "$(EXP)" in *shapes*) $(PY) -m bench.shapes.headline results/reference/shapes_world.json;; esac

SEED ?= 0
SHAPES_STEPS ?= 4000
train-shapes:  ## retrain shipped shapes model SEED (0, 1 or 2) with the shipped recipe: SHAPES_STEPS steps, 1 thread, resumable -> data/shapes/models/seed_$(SEED)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m bench.shapes.train --seed $(SEED) --steps $(SHAPES_STEPS) --snapshots 6 \
	  --out data/shapes/models/seed_$(SEED) --work .cache/shapes_train/seed_$(SEED)

train-shapes-all:  ## retrain the three shipped seeds at once (one process of 1 thread each) -> data/shapes/models/seed_{0,1,2}
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m bench.shapes.train --seeds 0 1 2 --steps $(SHAPES_STEPS) --snapshots 6 \
	  --out data/shapes/models --work .cache/shapes_train

report:  ## merge a finished sweep DIR=results/runs/multirun_... (or re-report one run) into one table, summary, figures
	@test -n "$(DIR)" || { echo "usage: make report DIR=<sweep or run directory>"; exit 2; }
	$(PY) -m bench.sweep $(DIR) $(if $(PARTIAL),--partial)

# glibc hands large freed blocks back to the OS, so every 20 MB map stack page-faults anew (~10 ms a pair)
MALLOC_ENV := MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296

bench-kcurve:  ## speed floor: every k (1..1,300) for 1,000 synthetic SDXL-shaped samples x 2 words -> results/reference/kcurve_benchmark.*
	$(MALLOC_ENV) $(PY) scripts/bench_kcurve.py $(ARGS)

perf:  ## capture cost vs plain generation and daam.trace on tiny_sdxl, 1 CPU thread -> results/reference/perf_cpu.{json,md}
	OMP_NUM_THREADS=1 $(PY) -m bench.perf --threads 1 --steps 10 --runs 5 --warmup 1 --profile $(ARGS)

gpu-wheels:  ## pure-Python wheels the GPU scripts (gpu_check.sh, gpu_train_shapes.sh) install offline -> .gpu_wheels/ (no torch)
	PY=$(PY) scripts/gpu_wheels.sh .gpu_wheels

gpu-train-shapes:  ## on a GPU machine (carry .gpu_wheels): train 3 shapes-model seeds at once and evaluate them in ~9 min -> OUT (DRY_RUN=1: on the CPU, tiny)
	bash scripts/gpu_train_shapes.sh

gpu-check:  ## GPU dress rehearsal, <= 8 min (carry .gpu_wheels): tests, perf, paper pipeline -> OUT or results/reference; GPU_CHECK_DRY=1 on CPU
	bash scripts/gpu_check.sh

lint:  ## ruff
	$(PY) -m ruff check bench tests scripts

clean-cache:  ## delete the stage cache (.cache/stages) and run outputs (results/runs)
	rm -rf .cache/stages results/runs
