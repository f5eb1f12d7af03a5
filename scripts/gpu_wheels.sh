#!/usr/bin/env bash
# Download the wheels scripts/gpu_check.sh installs offline on the GPU machine, into $1 (default .gpu_wheels).
# Only what that machine's image lacks (diffusers, daam, hydra-core, omegaconf, antlr4, open_clip_torch for the CLIP
# vocabulary file) plus transformers as a fallback, all pure Python, at the versions of this checkout's .venv, so the
# GPU figures use the libraries the CPU figures used. Never torch or any CUDA wheel. Must stay under the 64 MiB that
# travels to the device machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu_wheels}
PY=${PY:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf "$DEST" && mkdir -p "$DEST"
WHEELS="diffusers transformers hydra-core omegaconf open_clip_torch importlib_metadata"
SDISTS="daam antlr4-python3-runtime"  # published as source only: built into pure-Python wheels here
pins() { for d in "$@"; do echo "$d==$(version "$d")"; done; }
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" $(pins $WHEELS)
"$PY" -m pip wheel -q --no-deps -w "$DEST" $(pins $SDISTS)
if ls "$DEST" | grep -qiE '^(torch|nvidia|triton)[-_]'; then echo "error: a torch/CUDA wheel got in" >&2; exit 1; fi
if ls "$DEST" | grep -vqE -- '-py3-none-any\.whl$'; then echo "error: a platform-specific wheel got in" >&2; exit 1; fi
size=$(du -sb "$DEST" | cut -f1)
ls -1 "$DEST"
echo "$DEST: $(ls "$DEST" | wc -l) wheels, $((size / 1048576)) MiB"
if [ "$size" -gt $((48 * 1048576)) ]; then echo "error: over 48 MiB; the device machine takes 64 MiB in all" >&2; exit 1; fi
