#!/usr/bin/env bash
# Sourced by the GPU scripts (gpu_check.sh, gpu_train_shapes.sh) on an offline GPU machine with PyTorch preinstalled:
# prints what it found (python, GPU, packages), installs the pure-Python wheels of $WHEELS (`make gpu-wheels`) with
# --no-index --no-deps (torch is never touched; a package already there is kept) and falls back to the spaCy stand-in.
# Needs PY and WHEELS set; returns 2 when the wheels folder is missing, 3 when torch changed.
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
if [ ! -d "$WHEELS" ]; then echo "error: $WHEELS is missing: run 'make gpu-wheels' where pip works and carry it" >&2; return 2; fi
torch_before=$("$PY" -c "import torch; print(torch.__version__, torch.__file__)")
names=$(ls "$WHEELS" | grep -E '\.whl$' | sed -E 's/-.*//' | tr '\n' ' ')
"$PY" -m pip install --no-index --find-links "$WHEELS" --no-deps --disable-pip-version-check $names 2>&1 \
  | grep -vE '^\s*$' || true
torch_after=$("$PY" -c "import torch; print(torch.__version__, torch.__file__)")
if [ "$torch_before" != "$torch_after" ]; then echo "error: torch changed ($torch_before -> $torch_after)" >&2; return 3; fi
if ! "$PY" -c "import spacy" 2>/dev/null; then
  echo "spaCy is not installed: using the stand-in in scripts/offline_stubs (daam imports it; trace never uses it)"
  export PYTHONPATH="$PWD/scripts/offline_stubs${PYTHONPATH:+:$PYTHONPATH}"
fi
