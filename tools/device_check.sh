#!/usr/bin/env bash
# The project's one GPU call: what a bare GPU machine (torch + CUDA + torchvision installed, no
# package registry, 10 minutes per call, 15 minutes of device time in all) can check, in ONE call.
#
# ---- THE CALL (device tool `run`) -------------------------------------------------------------
#   first, here:  bash tools/fetch_device_wheels.sh        (yacs + pycocotools wheels into .whl/)
#                 bash tools/device_check.sh --dry-run     (the whole script on this CPU machine)
#   run:          command:   bash tools/device_check.sh
#                 carry:     [".whl"]
#                 timeout_s: 600
#   then:         give_back; record the results (summary.md) in BENCHMARKS.md / INSTALL.md
# ------------------------------------------------------------------------------------------------
#
# The script ends within BUDGET_S = 540 s of its start (--budget S to change): each step gets
# min(its cap, the time left), a step that no longer fits (less than its minimum left) is SKIPPED
# with the reason, and the summary is written in the last seconds. Steps, each logged with its
# duration:
#   1. preflight (stops the script with a "STOPPED at preflight" line if it fails): nvidia-smi; the
#      carried wheels checked (tools/fetch_device_wheels.sh --dry-run) and installed offline into
#      /tmp/site (PYTHONPATH); python / torch / CUDA / torchvision versions, the GPU and its compute
#      capability (TORCH_CUDA_ARCH_LIST unless set), `import yacs, pycocotools`, pytest-xdist and
#      pytest-timeout (tools/device_check_steps.py env). The synthetic dataset for step 5 is then
#      generated in the background.
#   2. build with the CUDA kernels (FORCE_CUDA=1 MASKRCNN_BENCHMARK_CUDA_KERNELS=1, MAX_JOBS=nproc;
#      CUDA_HOME and the nvidia/cu*/include path found by tools/cuda_env.sh); if that fails, the
#      CPU-only build, so that the portable GPU fallbacks are still tested; the registered kernels.
#   3. the CUDA op tests (tests/layers -k cuda: every op against its CPU kernel, gradients
#      included); then the rest of the suite in the background, in parallel (pytest-xdist) with a
#      per-test timeout (pytest-timeout; without them: serial, with faulthandler_timeout), cut
#      before step 6 if still running.
#   4. compute-sanitizer memcheck and racecheck on tools/sanitize_ops.py (every op at N in
#      {0, 1, 63, 64, 65, 130}, float32/float16/bfloat16, non-contiguous inputs).
#   5. 50 training iterations of the synthetic Dynamic ATSS config on the GPU with SOLVER.AMP fp16,
#      then the evaluation on the GPU (TEST.AMP fp16); finite losses and the AP checked and printed
#      (tools/device_check_steps.py train).
#   6. the ops benchmark against torchvision (tools/benchmarks/bench_ops_cuda.py: NMS 1k/5k/20k,
#      batched NMS 80 classes, IoU 200k x 500, focal loss 200k x 80, DCN c4; fp32 and fp16) and
#      tools/benchmarks/compare_torchvision.py --device cuda --amp fp16 --batch 8 --size 800 1344.
#
# Results, under $OUT (they come back; device_check_out/ when OUT is unset): summary.md (one line
# per step and the key results; also printed at the end), device_check.log (everything), build.log,
# tests_ops.log, tests_rest.log, sanitizer.log, bench_ops_cuda.md, compare_torchvision_cuda.md.
# Exit status: 0 when every step that ran passed, 1 if one failed, 2 if preflight stopped it.
#
# --dry-run (a CPU machine; tests/tools/test_device_check.py runs it): every step's command runs,
# with the GPU parts stubbed: nvidia-smi and compute-sanitizer are not called; setup.py parses the
# build command (build_ext --inplace --help: the checkout's build stays); pytest runs a subset (the
# op tests of one module; --collect-only for the rest); the sanitizer workload, the training (2
# iterations of batch 2 at 96-128 px, SOLVER.AMP and TEST.AMP off: fp16 autocast is CUDA-only) and
# the two benchmarks (tiny; only their --help without torchvision) run on the CPU.
# Variables: PYTHON (default python3), OUT, TORCH_CUDA_ARCH_LIST, MAX_JOBS, DEVICE_CHECK_WORK
# (scratch folder, default /tmp/device_check_work).
set -uo pipefail

DRY=0
BUDGET=540
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) BUDGET="$2"; shift ;;
    -h|--help) awk 'NR > 1 && /^set -uo/ {exit} NR > 1 {print}' "$0"; exit 0 ;;
    *) echo "device_check.sh: unknown argument $1 (--dry-run, --budget S)" >&2; exit 2 ;;
  esac
  shift
done

T0=$SECONDS
RESERVE=8  # seconds kept for the summary
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUTDIR="${OUT:-$REPO/device_check_out}"
WORK="${DEVICE_CHECK_WORK:-/tmp/device_check_work}"
rm -rf "$WORK"
mkdir -p "$OUTDIR" "$WORK"
LOG="$OUTDIR/device_check.log" BUILD_LOG="$OUTDIR/build.log" OPS_LOG="$OUTDIR/tests_ops.log"
REST_LOG="$OUTDIR/tests_rest.log" SAN_LOG="$OUTDIR/sanitizer.log" SUMMARY="$OUTDIR/summary.md"
: >"$LOG"; : >"$BUILD_LOG"; : >"$OPS_LOG"; : >"$REST_LOG"; : >"$SAN_LOG"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
NPROC="$(nproc 2>/dev/null || echo 4)"
ROWS=()     # summary table rows
RESULTS=()  # key result lines for the summary
FAILED=()

note() { echo "$*" | tee -a "$LOG"; }
left() { echo $((BUDGET - RESERVE - (SECONDS - T0))); }

# step NAME CAP MIN LOGFILE -- COMMAND...: runs COMMAND with the limit min(CAP, time left), its
# output appended to LOGFILE; skipped (return 125) when less than MIN seconds are left.
step() {
  local name="$1" cap="$2" min="$3" log="$4"; shift 5
  local remaining; remaining=$(left)
  if [ "$remaining" -lt "$min" ]; then
    note "== SKIPPED $name: deadline (${remaining} s left of the ${BUDGET} s budget, the step needs >= ${min} s)"
    ROWS+=("| $name | SKIPPED (deadline: ${remaining} s left) | - |")
    return 125
  fi
  local limit=$((cap < remaining ? cap : remaining)) t=$SECONDS rc status
  note "== [+$((SECONDS - T0)) s] $name (limit ${limit} s)"
  echo "\$ $*" >>"$log"
  timeout -k 5 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT (limit ${limit} s)"
  elif [ $rc -ne 0 ]; then status="FAILED (rc $rc)"
  else status="ok"; fi
  note "== $name: $status in $((SECONDS - t)) s${log:+ (log: $(basename "$log"))}"
  ROWS+=("| $name | $status | $((SECONDS - t)) |")
  [ $rc -eq 0 ] || FAILED+=("$name")
  return $rc
}

result() { RESULTS+=("$@"); printf '%s\n' "$@" | tee -a "$LOG"; }

write_summary() {  # write_summary VERDICT
  {
    echo "# device_check.sh $([ $DRY -eq 1 ] && echo '--dry-run ')$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "$1 after $((SECONDS - T0)) s of the ${BUDGET} s budget."
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---:|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo '```'
    printf '%s\n' "${RESULTS[@]}"
    echo '```'
  } >"$SUMMARY"
  echo "================ summary ($SUMMARY)"
  cat "$SUMMARY"
}

stop() {  # stop REASON: preflight failed
  note "== STOPPED at preflight: $1"
  write_summary "STOPPED at preflight: $1"
  exit 2
}

trap 'write_summary "KILLED by a signal"; exit 3' TERM INT
note "device_check.sh$([ $DRY -eq 1 ] && echo ' --dry-run') in $REPO, budget ${BUDGET} s, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
note "the call: command 'bash tools/device_check.sh', carry ['.whl'], timeout_s 600 (device tool run)"

# ---------------------------------------------------------------- 1. preflight
if [ $DRY -eq 1 ]; then
  note "== [dry-run] nvidia-smi: stubbed (no GPU here)"
else
  step "nvidia-smi" 20 5 "$LOG" -- nvidia-smi || stop "nvidia-smi failed: no GPU or no driver"
fi
SITE=/tmp/site
[ $DRY -eq 1 ] && SITE="$WORK/site"
note "== carried wheels: tools/fetch_device_wheels.sh --dry-run"
if bash tools/fetch_device_wheels.sh --dry-run 2>&1 | tee -a "$LOG"; then
  if [ $DRY -eq 1 ] && ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    note "== [dry-run] wheels not installed: they are for CPython 3.12, $PY is not"
  elif step "install the carried wheels (offline, --target $SITE)" 60 5 "$LOG" -- \
       "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl; then
    # the dry run keeps its own environment (the packages are installed here); it only installs
    [ $DRY -eq 1 ] || export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
else
  note "== no complete .whl/: nothing installed (run tools/fetch_device_wheels.sh here and carry .whl); the imports below decide"
  ROWS+=("| carried wheels (.whl/) | incomplete: nothing installed | - |")
fi
step "versions, GPU, imports" 90 5 "$WORK/env.txt" -- "$PY" tools/device_check_steps.py env
[ $? -eq 125 ] && stop "deadline (--budget ${BUDGET} s) before the versions were read"
cat "$WORK/env.txt" | tee -a "$LOG"
DC_TORCH_OK=0 DC_CUDA_OK=0 DC_ARCH="" DC_DEPS_OK=0 DC_TORCHVISION="" DC_XDIST=0 DC_TIMEOUT=0
eval "$(grep -E '^DC_[A-Z_]+=[A-Za-z0-9._+-]*$' "$WORK/env.txt")"
result "$(grep -E '^(python|torch|GPU 0|torchvision|import yacs)' "$WORK/env.txt")"
[ "$DC_TORCH_OK" = 1 ] || stop "$PY cannot import torch"
[ $DRY -eq 1 ] || [ "$DC_CUDA_OK" = 1 ] || stop "torch.cuda.is_available() is False on the GPU machine"
[ "$DC_DEPS_OK" = 1 ] || stop "import yacs, pycocotools failed: run tools/fetch_device_wheels.sh here and name .whl in carry"
ARCH="${TORCH_CUDA_ARCH_LIST:-${DC_ARCH:-9.0}}"
JOBS="${MAX_JOBS:-$NPROC}"

# The synthetic dataset of step 5, generated while the extension builds.
DATA="$WORK/data"
NTRAIN=200 NVAL=50
[ $DRY -eq 1 ] && NTRAIN=4 NVAL=2
"$PY" tools/make_synthetic_coco.py --out "$DATA" --num-train $NTRAIN --num-val $NVAL --overwrite >"$WORK/data.log" 2>&1 &
DATA_PID=$!

# ---------------------------------------------------------------- 2. build
SETUP_DRY=()
[ $DRY -eq 1 ] && SETUP_DRY=(--help)  # setup.py parses the command (extensions included), builds nothing
[ $DRY -eq 1 ] || rm -f maskrcnn_benchmark/_C*.so
BUILT=""
source tools/cuda_env.sh
if cuda_env "$PY"; then
  note "== CUDA_HOME=$CUDA_HOME${NVCC_APPEND_FLAGS:+ NVCC_APPEND_FLAGS=$NVCC_APPEND_FLAGS}, TORCH_CUDA_ARCH_LIST=$ARCH, MAX_JOBS=$JOBS"
  step "build with the CUDA kernels" 270 60 "$BUILD_LOG" -- env FORCE_CUDA=1 MASKRCNN_BENCHMARK_CUDA_KERNELS=1 \
    TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$JOBS" "$PY" setup.py build_ext --inplace "${SETUP_DRY[@]}" && BUILT=cuda
else
  note "== no CUDA build: $CUDA_ENV_ERROR"
fi
if [ -z "$BUILT" ]; then
  tail -n 40 "$BUILD_LOG"
  step "build, CPU kernels only (fallback)" 180 30 "$BUILD_LOG" -- env MAX_JOBS="$JOBS" \
    "$PY" setup.py build_ext --inplace "${SETUP_DRY[@]}" && BUILT=cpu
fi
result "build: ${BUILT:-FAILED}$([ "$BUILT" = cpu ] && echo ' (CPU kernels only: CUDA tensors use the portable fallbacks)')"
[ -n "$BUILT" ] || { tail -n 40 "$BUILD_LOG"; write_summary "FAILED: no build"; exit 1; }
KERNEL_ARGS=()
[ "$BUILT" = cuda ] && [ $DRY -eq 0 ] && KERNEL_ARGS=(--cuda)
if ! step "registered kernels" 60 10 "$LOG" -- "$PY" tools/device_check_steps.py kernels "${KERNEL_ARGS[@]}" \
   && [ "$BUILT" = cuda ] && [ $DRY -eq 0 ]; then
  # the CUDA build does not load (or lacks kernels): the CPU-only build, so that the rest still runs
  tail -n 20 "$LOG"
  rm -f maskrcnn_benchmark/_C*.so
  BUILT=""
  step "build, CPU kernels only (the CUDA build does not load)" 180 30 "$BUILD_LOG" -- env MAX_JOBS="$JOBS" \
    "$PY" setup.py build_ext --inplace && BUILT=cpu
  result "build: ${BUILT:-FAILED} after the CUDA build failed to load"
  [ -n "$BUILT" ] || { write_summary "FAILED: no build that loads"; exit 1; }
  step "registered kernels (CPU build)" 60 10 "$LOG" -- "$PY" tools/device_check_steps.py kernels
fi

# ---------------------------------------------------------------- 3. tests
OPS_TESTS=(tests/layers -k cuda)
[ $DRY -eq 1 ] && OPS_TESTS=(tests/layers/test_nms.py -k cuda)
step "CUDA op tests (each op vs its CPU kernel)" 150 20 "$OPS_LOG" -- \
  "$PY" -m pytest -q -rfEs "${OPS_TESTS[@]}"
result "op tests: $(tail -n 1 "$OPS_LOG")"

if [ "$DC_XDIST" = 1 ] && [ "$DC_TIMEOUT" = 1 ]; then
  PARALLEL=(-n "$((NPROC > 6 ? NPROC - 4 : 2))" --timeout 120)
else
  PARALLEL=(-o faulthandler_timeout=120)  # no plugins: serial; a test stuck for 120 s dumps its stack
  note "== pytest-xdist / pytest-timeout missing: the rest of the suite runs serially"
fi
REST_TESTS=(tests -k "not (layers and cuda)" --ignore=tests/tools/test_device_check.py)  # not this script again
[ $DRY -eq 1 ] && REST_TESTS=(--collect-only tests/structures)
# The rest of the suite runs beside steps 4 and 5, and is cut before the benchmarks of step 6.
SUITE_END=$((T0 + BUDGET - RESERVE - 150))
SUITE_CAP=$((SUITE_END - SECONDS))
SUITE_PID=""
if [ "$SUITE_CAP" -ge 30 ]; then
  note "== [+$((SECONDS - T0)) s] rest of the suite, in the background (limit ${SUITE_CAP} s)"
  echo "\$ $PY -m pytest -q -rfE ${PARALLEL[*]} ${REST_TESTS[*]}" >>"$REST_LOG"
  SUITE_T=$SECONDS
  timeout -k 10 "$SUITE_CAP" "$PY" -m pytest -q -rfE --durations=10 "${PARALLEL[@]}" \
    "${REST_TESTS[@]}" >>"$REST_LOG" 2>&1 &
  SUITE_PID=$!
else
  note "== SKIPPED rest of the suite: deadline"
  ROWS+=("| rest of the suite | SKIPPED (deadline) | - |")
fi

# ---------------------------------------------------------------- 4. compute-sanitizer
if [ $DRY -eq 1 ]; then
  step "sanitizer workload on the CPU (compute-sanitizer stubbed)" 120 10 "$SAN_LOG" -- \
    "$PY" tools/sanitize_ops.py --device cpu --dtypes float32 --sizes 0,1,65
elif [ "$BUILT" != cuda ]; then
  note "== SKIPPED compute-sanitizer: no CUDA kernels built"
  ROWS+=("| compute-sanitizer | SKIPPED (no CUDA kernels) | - |")
else
  SANITIZER="$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")"
  step "compute-sanitizer memcheck" 45 15 "$SAN_LOG" -- env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$SANITIZER" --tool memcheck --error-exitcode 9 --print-limit 20 "$PY" tools/sanitize_ops.py
  # shared-memory races do not depend on the dtype: float32 only
  step "compute-sanitizer racecheck" 40 15 "$SAN_LOG" -- env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$SANITIZER" --tool racecheck --error-exitcode 9 --print-limit 20 "$PY" tools/sanitize_ops.py --dtypes float32
  result "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|sanitize_ops:' "$SAN_LOG")"
fi

# ---------------------------------------------------------------- 5. training + evaluation
wait "$DATA_PID" || { note "== synthetic dataset generation failed:"; tail -n 20 "$WORK/data.log" | tee -a "$LOG"; }
cat "$WORK/data.log" >>"$LOG"
TRAIN_DIR="$WORK/train"
ITERS=50 AMP=fp16 TRAIN=(MODEL.DEVICE cuda SOLVER.WARMUP_ITERS 10 SOLVER.STEPS "(40,)" SOLVER.LOG_PERIOD 10
                         SOLVER.CHECKPOINT_PERIOD 50 DATALOADER.NUM_WORKERS 4)
# dry run: float32 (fp16 autocast is CUDA-only; its CPU fallback, bf16, is emulated and slow on most
# CPUs), 2 iterations of batch 2 at 96-128 px
[ $DRY -eq 1 ] && ITERS=2 AMP="" TRAIN=(MODEL.DEVICE cpu SOLVER.WARMUP_ITERS 1 SOLVER.STEPS "(1,)" SOLVER.LOG_PERIOD 1
                                        SOLVER.CHECKPOINT_PERIOD 2 DATALOADER.NUM_WORKERS 0 SOLVER.IMS_PER_BATCH 2
                                        TEST.IMS_PER_BATCH 2 INPUT.MIN_SIZE_TRAIN "(96,)" INPUT.MAX_SIZE_TRAIN 128
                                        INPUT.MIN_SIZE_TEST 96 INPUT.MAX_SIZE_TEST 128)
step "train $ITERS iterations (SOLVER.AMP ${AMP:-off}) + evaluation" 150 40 "$LOG" -- \
  "$PY" tools/train_net.py --config-file configs/dynamic_atss/dynamic_atss_R_18_FPN_synthetic.yaml "${TRAIN[@]}" \
  SOLVER.MAX_ITER "$ITERS" SOLVER.AMP "$AMP" TEST.AMP "$AMP" \
  DATASETS.TRAIN "(\"$DATA/annotations/instances_train.json:$DATA/train\",)" \
  DATASETS.TEST "(\"$DATA/annotations/instances_val.json:$DATA/val\",)" OUTPUT_DIR "$TRAIN_DIR"
step "training report (finite losses, AP)" 30 5 "$WORK/train_report.txt" -- "$PY" tools/device_check_steps.py train "$TRAIN_DIR"
cat "$WORK/train_report.txt" >>"$LOG"
result "$(grep -vE '^\$ ' "$WORK/train_report.txt")"

# ---------------------------------------------------------------- 6. benchmarks
if [ -n "$SUITE_PID" ]; then
  while kill -0 "$SUITE_PID" 2>/dev/null && [ "$SECONDS" -lt "$SUITE_END" ]; do sleep 2; done
  if kill -0 "$SUITE_PID" 2>/dev/null; then
    kill "$SUITE_PID" 2>/dev/null; wait "$SUITE_PID"
    status="CUT at the benchmarks' start (see its log for the tests that ran)"
    FAILED+=("rest of the suite")
  else
    wait "$SUITE_PID"; rc=$?
    if [ $rc -eq 0 ]; then status=ok; elif [ $rc -eq 124 ]; then status="TIMEOUT"; else status="FAILED (rc $rc)"; fi
    [ $rc -eq 0 ] || FAILED+=("rest of the suite")
  fi
  note "== rest of the suite: $status in $((SECONDS - SUITE_T)) s (log: tests_rest.log)"
  ROWS+=("| rest of the suite (background) | $status | $((SECONDS - SUITE_T)) |")
  result "rest of the suite: $(grep -E '(passed|failed|error|no tests ran|tests? collected)' "$REST_LOG" | tail -n 1)"
fi

BENCH=(--iters 10 --warmup 3)
CMP=(--device cuda --amp fp16 --batch 8 --size 800 1344 --iters 3 --warmup 2 --no-memory)
if [ $DRY -eq 1 ]; then
  BENCH=(--device cpu --quick --iters 1 --warmup 0 --dtypes float32)
  CMP=(--device cpu --batch 1 --size 64 64 --iters 1 --warmup 0 --no-memory --models dynamic_atss,tv_retinanet)
fi
if [ -z "$DC_TORCHVISION" ]; then  # both compare against torchvision: only their command lines are checked
  note "== no torchvision: the benchmarks only parse their arguments (--help)"
  BENCH=(--help) CMP=(--help)
fi
step "ops benchmark vs torchvision" 90 30 "$LOG" -- \
  "$PY" tools/benchmarks/bench_ops_cuda.py "${BENCH[@]}" --out "$OUTDIR/bench_ops_cuda.md" \
  && [ -f "$OUTDIR/bench_ops_cuda.md" ] && result "$(cat "$OUTDIR/bench_ops_cuda.md")"
step "compare_torchvision.py (${CMP[*]})" 150 45 "$WORK/compare.log" -- \
  "$PY" tools/benchmarks/compare_torchvision.py "${CMP[@]}"
if [ -f "$WORK/compare.log" ]; then  # the table, also the rows of a run cut short
  grep -E '^(\||torch |detections|load average)' "$WORK/compare.log" >"$OUTDIR/compare_torchvision_cuda.md"
  result "$(cat "$OUTDIR/compare_torchvision_cuda.md")"
  cat "$WORK/compare.log" >>"$LOG"
fi

if [ "${#FAILED[@]}" -eq 0 ]; then
  write_summary "PASSED$([ $DRY -eq 1 ] && echo ' (dry run)')"
  exit 0
fi
write_summary "FAILED: ${FAILED[*]}"
exit 1
