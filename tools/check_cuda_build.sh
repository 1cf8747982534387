#!/usr/bin/env bash
# Compile-checks the CUDA kernels (csrc/cuda/*.cu) without a GPU.
#
#   tools/check_cuda_build.sh [VENV]     (default VENV: /tmp/cuda-venv)
#
# Builds maskrcnn_benchmark._C with the CUDA sources in a CUDA build of torch (the venv; created
# with torch==2.14.1 (CUDA 13.0) + torchvision==0.29.1 + the project's requirements if missing),
# in a scratch copy of the repository (so the in-place CPU build of the checkout is untouched),
# with FORCE_CUDA=1 MASKRCNN_BENCHMARK_CUDA_KERNELS=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}.
# Then imports the built library (no GPU needed) and prints one line per operator: whether a
# compiled CUDA kernel and an Autocast (CUDA) kernel are registered. Exits non-zero if any is
# missing. Heavy (nvcc; minutes on 2 cores), so not part of CI: run it before every change that
# touches csrc/. The scratch copy (${CHECK_CUDA_BUILD_DIR:-/tmp/maskrcnn_benchmark_cuda_build})
# is kept, so a rerun recompiles only the changed sources.
set -euo pipefail

VENV="${1:-/tmp/cuda-venv}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRATCH="${CHECK_CUDA_BUILD_DIR:-/tmp/maskrcnn_benchmark_cuda_build}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  echo "== creating $VENV (torch 2.14.1 with CUDA 13.0, about 5.5 GB)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/pip" install -q -c <(echo torch==2.14.1) -r "$REPO/requirements.txt" ninja pytest
fi
"$PY" - <<'PYEOF'
import sys
import torch
if torch.version.cuda is None:
    sys.exit(f"{sys.executable}: torch {torch.__version__} has no CUDA; give a venv with a CUDA build of torch")
print(f"== torch {torch.__version__} (CUDA {torch.version.cuda}) in {sys.prefix}")
PYEOF
# The CUDA toolkit (CUDA_HOME) and the library headers' include path: tools/cuda_env.sh.
source "$REPO/tools/cuda_env.sh"
cuda_env "$PY" || { echo "$CUDA_ENV_ERROR"; exit 1; }
echo "== CUDA_HOME=$CUDA_HOME ${NVCC_APPEND_FLAGS:+(NVCC_APPEND_FLAGS=$NVCC_APPEND_FLAGS)}"

echo "== scratch copy: $SCRATCH"
mkdir -p "$SCRATCH"
# Everything but build/ (ninja's objects) is replaced; tar keeps the timestamps, so ninja recompiles
# only the sources that changed. The checkout's own build outputs and data are left out.
find "$SCRATCH" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
tar -C "$REPO" --exclude=./.git --exclude=./build --exclude='*.so' --exclude='__pycache__' \
  --exclude=./datasets --exclude=./demo_output --exclude=./training_dir --exclude=./.whl \
  --exclude=./device_check_out -cf - . | tar -C "$SCRATCH" -xf -

echo "== building with the CUDA kernels (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0})"
(
  cd "$SCRATCH"
  FORCE_CUDA=1 MASKRCNN_BENCHMARK_CUDA_KERNELS=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    MAX_JOBS="${MAX_JOBS:-2}" PATH="$VENV/bin:$PATH" "$PY" setup.py build_ext --inplace >build.log 2>&1 \
    || { tail -n 80 build.log; echo "build FAILED (full log: $SCRATCH/build.log)"; exit 1; }
  grep -iE "warning" build.log | grep -v "Please use" | head -n 20 || true
)

echo "== registered kernels"
cd "$SCRATCH"
CUDA_VISIBLE_DEVICES="" "$PY" tools/device_check_steps.py kernels --cuda
