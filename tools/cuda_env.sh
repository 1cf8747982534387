# CUDA toolkit discovery for building the CUDA kernels (csrc/cuda/*.cu); sourced, not run, by
# tools/check_cuda_build.sh and tools/device_check.sh:
#
#   source tools/cuda_env.sh
#   cuda_env PYTHON || echo "no toolkit: $CUDA_ENV_ERROR"
#
# cuda_env exports CUDA_HOME (kept if set; else the toolkit of the nvcc on PATH, whose
# /usr/local/bin/nvcc may be a wrapper, then /usr/local/cuda, then the newest /usr/local/cuda-*)
# and, where that toolkit lacks the library headers that ATen's CUDA headers include (cusparse.h,
# cublas_v2.h, ...: a minimal toolkit has nvcc and the runtime only), appends to NVCC_APPEND_FLAGS
# the include folder that torch's CUDA wheels ship them in (nvidia/cu*/include beside PYTHON's
# torch). Returns 1 with the reason in CUDA_ENV_ERROR when either is missing.

cuda_env() {
  local py="$1" candidate nv_include
  CUDA_ENV_ERROR=""
  if [ -z "${CUDA_HOME:-}" ]; then
    for candidate in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent/bin/nvcc)")")")" \
                     /usr/local/cuda $(ls -d /usr/local/cuda-* 2>/dev/null | sort -rV); do
      if [ -x "$candidate/bin/nvcc" ] && [ -f "$candidate/include/cuda_runtime.h" ]; then
        CUDA_HOME="$candidate"
        break
      fi
    done
  fi
  if [ -z "${CUDA_HOME:-}" ]; then
    CUDA_ENV_ERROR="no CUDA toolkit found (nvcc + include/cuda_runtime.h): set CUDA_HOME"
    return 1
  fi
  export CUDA_HOME
  if [ ! -f "$CUDA_HOME/include/cusparse.h" ]; then
    nv_include="$("$py" -c "import glob, os, torch; print(next(iter(sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), '..', 'nvidia', 'cu*', 'include')))), ''))")"
    if [ -z "$nv_include" ]; then
      CUDA_ENV_ERROR="cusparse.h not found in $CUDA_HOME/include nor in the nvidia/cu*/include of $py's torch"
      return 1
    fi
    export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -I$(cd "$nv_include" && pwd)"
  fi
  return 0
}
