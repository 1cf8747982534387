#!/usr/bin/env python
"""The Python parts of tools/device_check.sh (and the kernel listing of tools/check_cuda_build.sh).

    python tools/device_check_steps.py env                 # versions, GPU, plugins: KEY=VALUE lines
    python tools/device_check_steps.py kernels [--cuda]    # registered compiled kernels per op
    python tools/device_check_steps.py train OUTPUT_DIR    # finite losses and the AP of a training run

``env`` prints human-readable lines and then ``KEY=VALUE`` lines (prefixed ``DC_``) that the shell
script reads: DC_TORCH_OK, DC_CUDA_OK, DC_ARCH (the GPU's compute capability, e.g. 9.0, for
TORCH_CUDA_ARCH_LIST), DC_DEPS_OK (``import yacs, pycocotools``), DC_TORCHVISION, DC_XDIST and
DC_TIMEOUT (pytest-xdist / pytest-timeout importable). It exits 0 even when something is missing:
the script decides.

``kernels`` exits 1 if an operator lacks a compiled kernel: CPU and AutocastCPU always, CUDA and
AutocastCUDA too with ``--cuda``; the CPU-only helper ops (Winograd transforms) need a CPU kernel.

``train`` reads OUTPUT_DIR/metrics.jsonl (maskrcnn_benchmark/utils/metrics_io.py): exits 1 unless
every training line has a finite total loss (non-finite values are stored as null) and an
evaluation line with ``bbox/AP`` exists; prints the loss at each logged iteration and the AP.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))  # run from a checkout


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


def env() -> int:
    print(f"python {sys.version.split()[0]} ({sys.executable})")
    values = {"TORCH_OK": 0, "CUDA_OK": 0, "ARCH": "", "DEPS_OK": 0, "TORCHVISION": "",
              "XDIST": int(_importable("xdist")), "TIMEOUT": int(_importable("pytest_timeout"))}
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        print(f"import torch FAILED: {type(e).__name__}: {e}")
    else:
        values["TORCH_OK"] = 1
        print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
              f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}")
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            props = torch.cuda.get_device_properties(0)
            print(f"GPU 0: {torch.cuda.get_device_name(0)}, compute capability {major}.{minor}, "
                  f"{props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs; "
                  f"{torch.cuda.device_count()} device(s)")
            values.update(CUDA_OK=1, ARCH=f"{major}.{minor}")
        else:
            print("torch.cuda.is_available(): False")
    try:
        import torchvision

        values["TORCHVISION"] = torchvision.__version__
        print(f"torchvision {torchvision.__version__}")
    except Exception as e:  # noqa: BLE001
        print(f"torchvision: not importable ({type(e).__name__}: {e})")
    try:
        import pycocotools  # noqa: F401
        import yacs  # noqa: F401
    except Exception as e:  # noqa: BLE001
        print(f"import yacs, pycocotools FAILED: {type(e).__name__}: {e}")
    else:
        values["DEPS_OK"] = 1
        print("import yacs, pycocotools: ok")
    print(f"pytest-xdist: {'yes' if values['XDIST'] else 'no'}, pytest-timeout: {'yes' if values['TIMEOUT'] else 'no'}")
    for key, value in values.items():
        print(f"DC_{key}={value}")
    return 0


def kernels(cuda: bool) -> int:
    import torch  # noqa: F401  (before the extension)
    from maskrcnn_benchmark.layers import _ops

    _ops.load_ops()
    keys = ("CPU", "AutocastCPU") + (("CUDA", "AutocastCUDA") if cuda else ())
    missing = []
    for name in _ops.OP_NAMES:
        found = {k: _ops.has_compiled_kernel(name, k) for k in keys}
        print(f"{name:30s} " + "  ".join(f"{k}: {'compiled' if v else 'MISSING':8s}" for k, v in found.items()))
        if not all(found.values()):
            missing.append(name)
    for name in _ops.CPU_ONLY_OP_NAMES:  # CPU-only helper ops (the Winograd transforms)
        cpu = _ops.has_compiled_kernel(name, "CPU")
        print(f"{name:30s} CPU only: {'compiled' if cpu else 'MISSING'}")
        if not cpu:
            missing.append(name)
    if missing:
        print(f"missing compiled kernels for: {', '.join(missing)}")
        return 1
    print(f"all {len(_ops.OP_NAMES)} operators have compiled {', '.join(keys)} kernels; "
          f"the {len(_ops.CPU_ONLY_OP_NAMES)} CPU-only ones a CPU kernel")
    return 0


def train_report(output_dir: str) -> int:
    from maskrcnn_benchmark.utils.metrics_io import METRICS_FILE, read_metrics

    path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.isfile(path):
        print(f"train: {path} does not exist (the training did not log)")
        return 1
    rows = read_metrics(path)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "bbox/AP" in r]
    bad = [r["iteration"] for r in train_rows if r["loss"] is None or not math.isfinite(r["loss"])]
    for r in train_rows:
        terms = "  ".join(f"{k} {v:.4f}" for k, v in r.items()
                          if k.startswith("loss") and isinstance(v, float))
        step = r.get("time") if isinstance(r.get("time"), float) else float("nan")
        memory = f"  memory {r['memory_mb']:.0f} MiB" if isinstance(r.get("memory_mb"), (int, float)) else ""
        print(f"iter {r['iteration']:4d}: {terms}  time {step:.4f} s/it{memory}")
    for r in eval_rows:
        print(f"eval at iter {r['iteration']} on {r.get('dataset')}: "
              + "  ".join(f"{k} {v:.4f}" for k, v in r.items() if k.startswith("bbox/") and v is not None))
    ok = bool(train_rows) and not bad and bool(eval_rows)
    print(f"train: {len(train_rows)} logged iterations, non-finite loss at {bad or 'none'}, "
          f"{len(eval_rows)} evaluation(s): {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env")
    k = sub.add_parser("kernels")
    k.add_argument("--cuda", action="store_true", help="require the CUDA and AutocastCUDA kernels too")
    t = sub.add_parser("train")
    t.add_argument("output_dir")
    args = p.parse_args(argv)
    if args.cmd == "env":
        return env()
    if args.cmd == "kernels":
        return kernels(args.cuda)
    return train_report(args.output_dir)


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    sys.exit(run_tool(main))
