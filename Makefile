# Selective aggregation vs DAAM: benchmark harness. `make help` lists the targets.
SHELL := /bin/bash
PY_SYS ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXP ?= smoke
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-slow smoke bench lint clean-cache

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

test-slow:  ## the slower end-to-end checks
	$(PY) -m pytest -q -m slow

smoke:  ## tiny_sdxl, 6 prompts x 2 seeds, CPU, offline: checks the whole pipeline, prints the summary
	$(PY) -m bench $(ARGS)

bench:  ## run experiment EXP (conf/experiment/EXP.yaml) into results/runs/
	$(PY) -m bench experiment=$(EXP) $(ARGS)

lint:  ## ruff
	$(PY) -m ruff check bench tests scripts

clean-cache:  ## delete the stage cache (.cache/stages) and run outputs (results/runs)
	rm -rf .cache/stages results/runs
