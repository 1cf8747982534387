#!/usr/bin/env bash
# One-shot set-up on a fresh machine: torch (kept if already installed), Python deps, the compiled
# ops (maskrcnn_benchmark._C) built in place, and the package installed in editable mode.
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  # CPU build pinned: an unpinned "torch" would pull a multi-GB CUDA build.
  "$PY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install -q -r requirements.txt
MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q --no-build-isolation --no-deps -e .
"$PY" -c "import torch, maskrcnn_benchmark._C; print('maskrcnn_benchmark ops built against torch', torch.__version__)"
