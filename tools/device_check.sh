#!/usr/bin/env bash
# The whole GPU check in one call, for a GPU machine that starts bare (torch with CUDA and
# torchvision installed; no registry: the other wheels carried in .whl/, see
# tools/fetch_device_wheels.sh):
#
#   1. installs the carried wheels (.whl/*.whl) into /tmp/site, if any;
#   2. builds the extension with the CUDA kernels (FORCE_CUDA=1 MASKRCNN_BENCHMARK_CUDA_KERNELS=1,
#      TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}) in place and lists the registered kernels;
#   3. runs the whole test suite (the CUDA test classes compare every op with its CPU kernel on the
#      same inputs, gradients included; they run only where the compiled CUDA kernel is registered);
#   4. trains 50 iterations of the synthetic Dynamic ATSS config on the GPU (finite losses);
#   5. runs the GPU ops benchmark against torchvision (tools/benchmarks/bench_ops_cuda.py).
#
# One log: $OUT/device_check.log (or device_check_out/ when OUT is unset); the benchmark table in
# $OUT/bench_ops_cuda.md. Each step has its own time limit, so that the whole script ends in under
# 8 minutes (budget: build ~2, tests ~2, training ~1, benchmark ~2). Exit status: non-zero if a step
# failed (the later steps still run, so one call shows everything).
#
#   run: bash tools/device_check.sh          (carry: .whl)
#
# A second call, `bash tools/device_check.sh compare`, runs only the issue-15 GPU comparison against
# torchvision (tools/benchmarks/compare_torchvision.py --device cuda --amp fp16, batch 8, 800 x 1344;
# at most 5 minutes, not yet run on a GPU), building the extension first only if no build is there; its table goes to
# $OUT/compare_torchvision_cuda.md.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUTDIR="${OUT:-$REPO/device_check_out}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/device_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
FAILED=()

step() {  # step NAME TIMEOUT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  echo "== [$(date -u +%H:%M:%S)] $name (limit ${limit}s)" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0))s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || FAILED+=("$name(rc=$rc)")
  return "$rc"
}

if ls .whl/*.whl >/dev/null 2>&1; then
  step "install carried wheels" 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
  "$PY" -c "import torchvision; print('torchvision', torchvision.__version__)" || true
} 2>&1 | tee -a "$LOG"

MODE="${1:-all}"
if [ "$MODE" = "compare" ]; then
  if ! ls maskrcnn_benchmark/_C*.so >/dev/null 2>&1; then
    step "build (CUDA kernels)" 240 env FORCE_CUDA=1 MASKRCNN_BENCHMARK_CUDA_KERNELS=1 \
      TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
      "$PY" setup.py build_ext --inplace
  fi
  step "compare with torchvision on the GPU (fp16 autocast)" 300 "$PY" tools/benchmarks/compare_torchvision.py \
    --device cuda --amp fp16 --batch 8 --size 800 1344 --iters 5 --warmup 2 --no-memory
  grep -E '^(\||torch |detections|load average)' "$LOG" >"$OUTDIR/compare_torchvision_cuda.md" || true
  if [ "${#FAILED[@]}" -eq 0 ]; then echo "== compare PASSED" | tee -a "$LOG"; else
    echo "== compare FAILED: ${FAILED[*]}" | tee -a "$LOG"; exit 1; fi
  exit 0
fi

rm -f maskrcnn_benchmark/_C*.so
step "build (CUDA kernels)" 240 env FORCE_CUDA=1 MASKRCNN_BENCHMARK_CUDA_KERNELS=1 \
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
  "$PY" setup.py build_ext --inplace
step "registered kernels" 60 "$PY" - <<'PYEOF'
import sys
import torch  # noqa: F401  (before the extension)
from maskrcnn_benchmark.layers._ops import has_compiled_kernel, load_ops
load_ops()
ops = ["nms", "batched_nms", "box_iou", "sigmoid_focal_loss", "sigmoid_focal_loss_backward",
       "deform_conv2d", "_deform_conv2d_backward"]
missing = [op for op in ops if not has_compiled_kernel(op, "CUDA")]
for op in ops:
    print(f"{op:30s} CUDA: {'compiled' if op not in missing else 'MISSING'}")
sys.exit(1 if missing else 0)
PYEOF

step "test suite" 240 "$PY" -m pytest -q -p no:cacheprovider tests -rs

TRAIN_DIR="/tmp/device_check_train"
rm -rf "$TRAIN_DIR"
step "train 50 iterations on the GPU" 150 env MASKRCNN_BENCHMARK_DATA_DIR=/tmp/device_check_data \
  "$PY" tools/train_net.py --config-file configs/dynamic_atss/dynamic_atss_R_18_FPN_synthetic.yaml \
  --skip-test MODEL.DEVICE cuda SOLVER.MAX_ITER 50 SOLVER.LOG_PERIOD 10 SOLVER.CHECKPOINT_PERIOD 50 \
  DATALOADER.NUM_WORKERS 4 OUTPUT_DIR "$TRAIN_DIR"
grep -E "iter: (10|20|30|40|50)/" "$TRAIN_DIR"/log.txt 2>/dev/null | tail -5 | tee -a "$LOG" >/dev/null || true

step "ops benchmark vs torchvision" 180 "$PY" tools/benchmarks/bench_ops_cuda.py --out "$OUTDIR/bench_ops_cuda.md"

if [ "${#FAILED[@]}" -eq 0 ]; then
  echo "== device check PASSED" | tee -a "$LOG"
else
  echo "== device check FAILED: ${FAILED[*]}" | tee -a "$LOG"
  exit 1
fi
