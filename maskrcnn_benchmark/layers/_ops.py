"""Lazy loading of the compiled operator library ``maskrcnn_benchmark._C``: the one Python home
of every operator's fake kernel and autograd formula.

Importing this module never fails: if the extension is missing, the error is kept and raised by
:func:`load_ops` with the command that builds it. Loading the extension registers the operators of
:data:`OP_NAMES` under ``torch.ops.maskrcnn_benchmark`` (schemas in ``csrc/ops.cpp``); this module
then adds their fake (meta) kernels, used by ``torch.compile``/``opcheck``, and the autograd
formulas of ``sigmoid_focal_loss`` and ``deform_conv2d`` (which call the backward ops through the
dispatcher). The Python wrappers (``nms.py``, ``box_iou.py``, ``sigmoid_focal_loss.py``,
``dcn.py``) reach the ops through :func:`load_ops`.

Compiled kernels: CPU (always), Autocast / AutocastCPU (always; run the ops in float32 under
mixed precision) and CUDA (only when built with ``MASKRCNN_BENCHMARK_CUDA_KERNELS=1``, see
setup.py). For every operator without a compiled kernel for a device type in
:data:`FALLBACK_DEVICE_TYPES`, the portable PyTorch kernel of :mod:`._fallback` is registered for
that device (slower; a warning names the op at its first use on the device).
:func:`has_compiled_kernel` tells a compiled kernel from such a fallback.
"""
from __future__ import annotations

import functools
import logging
import re
import warnings
from typing import Callable, Dict, Optional

import torch

__all__ = ["BUILD_COMMAND", "CPU_ONLY_OP_NAMES", "FALLBACK_DEVICE_TYPES", "OP_NAMES", "has_compiled_kernel",
           "load_ops", "registered_fallbacks"]

logger = logging.getLogger(__name__)

# Device types (torch.library names) that get the portable kernels where no compiled one exists.
FALLBACK_DEVICE_TYPES = ("cuda", "xpu", "mps")
# (op name, device type) -> portable kernel registered by _register_fallback_kernels
_fallbacks: Dict[tuple, Callable] = {}

BUILD_COMMAND = "MAX_JOBS=2 python setup.py build_ext --inplace"

# Every operator of the library (schemas in csrc/ops.cpp), forward ops first.
OP_NAMES = ("nms", "batched_nms", "box_iou", "sigmoid_focal_loss", "sigmoid_focal_loss_backward",
            "deform_conv2d", "_deform_conv2d_backward")
# Operators with a CPU kernel only (no fallback, no CUDA kernel): the Winograd transforms, which
# layers/winograd.py calls on CPU float32 tensors only (on a GPU cuDNN picks its own algorithm).
CPU_ONLY_OP_NAMES = ("winograd_input_transform", "winograd_output_transform",
                     "winograd_output_transform_backward")

_loaded = False
_load_error: Optional[BaseException] = None


def _try_load() -> bool:
    global _loaded, _load_error
    if _loaded:
        return True
    try:
        import maskrcnn_benchmark._C  # noqa: F401  (registers torch.ops.maskrcnn_benchmark.*)
    except (ImportError, OSError) as e:
        _load_error = e
        return False
    _register_python_kernels()
    _register_fallback_kernels()
    _loaded = True
    return True


def load_ops():
    """Returns ``torch.ops.maskrcnn_benchmark``; raises ImportError if the extension is not built."""
    if not _loaded and not _try_load():
        raise ImportError(
            f"maskrcnn_benchmark._C (the compiled operators {', '.join(OP_NAMES)}) is not built or "
            "failed to load. Build it from the repository root "
            f"with `{BUILD_COMMAND}` (or `pip install -e . --no-build-isolation`). "
            f"Original error: {_load_error}"
        ) from _load_error
    return torch.ops.maskrcnn_benchmark


def _register_python_kernels() -> None:
    ns = "maskrcnn_benchmark::"

    def nms_fake(boxes, scores, iou_threshold):
        torch._check(boxes.dim() == 2 and boxes.size(1) == 4, lambda: "nms: boxes must have shape [N, 4]")
        torch._check(scores.dim() == 1 and scores.size(0) == boxes.size(0), lambda: "nms: scores must have shape [N]")
        num_kept = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((num_kept,), dtype=torch.int64)

    def batched_nms_fake(boxes, scores, idxs, iou_threshold):
        torch._check(boxes.dim() == 2 and boxes.size(1) == 4, lambda: "batched_nms: boxes must have shape [N, 4]")
        torch._check(idxs.dim() == 1 and idxs.size(0) == boxes.size(0), lambda: "batched_nms: idxs must have shape [N]")
        num_kept = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((num_kept,), dtype=torch.int64)

    def box_iou_fake(boxes1, boxes2):
        torch._check(boxes1.dim() == 2 and boxes1.size(1) == 4, lambda: "box_iou: boxes1 must have shape [N, 4]")
        torch._check(boxes2.dim() == 2 and boxes2.size(1) == 4, lambda: "box_iou: boxes2 must have shape [M, 4]")
        return boxes1.new_empty((boxes1.size(0), boxes2.size(0)))

    def focal_fake(logits, targets, gamma, alpha):
        torch._check(logits.dim() == 2, lambda: "sigmoid_focal_loss: logits must have shape [N, C]")
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    def focal_backward_fake(grad_output, logits, targets, gamma, alpha):
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    torch.library.register_fake(ns + "nms", nms_fake)
    torch.library.register_fake(ns + "batched_nms", batched_nms_fake)
    torch.library.register_fake(ns + "box_iou", box_iou_fake)
    torch.library.register_fake(ns + "sigmoid_focal_loss", focal_fake)
    torch.library.register_fake(ns + "sigmoid_focal_loss_backward", focal_backward_fake)

    def focal_setup_context(ctx, inputs, output):
        logits, targets, gamma, alpha = inputs
        ctx.save_for_backward(logits, targets)
        ctx.gamma, ctx.alpha = gamma, alpha

    def focal_backward(ctx, grad_output):
        logits, targets = ctx.saved_tensors
        grad = torch.ops.maskrcnn_benchmark.sigmoid_focal_loss_backward(
            grad_output, logits, targets, ctx.gamma, ctx.alpha
        )
        return grad, None, None, None

    torch.library.register_autograd(
        ns + "sigmoid_focal_loss", focal_backward, setup_context=focal_setup_context
    )
    _register_deform_conv2d(ns)
    _register_winograd(ns)


def _conv_out_size(size, pad: int, dil: int, k: int, stride: int):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _register_deform_conv2d(ns: str) -> None:
    def deform_fake(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, dg):
        torch._check(input.dim() == 4 and weight.dim() == 4, lambda: "deform_conv2d: input/weight must be 4-D")
        out_h = _conv_out_size(input.shape[2], pad_h, dil_h, weight.shape[2], stride_h)
        out_w = _conv_out_size(input.shape[3], pad_w, dil_w, weight.shape[3], stride_w)
        return input.new_empty(input.shape[0], weight.shape[0], out_h, out_w)

    def deform_backward_fake(grad_out, input, weight, offset, mask, *params):
        return (
            torch.empty_like(input),
            torch.empty_like(weight),
            torch.empty_like(offset),
            torch.empty_like(mask),
            grad_out.new_empty(weight.shape[0]),
        )

    torch.library.register_fake(ns + "deform_conv2d", deform_fake)
    torch.library.register_fake(ns + "_deform_conv2d_backward", deform_backward_fake)

    def deform_setup_context(ctx, inputs, output):
        input, weight, offset, mask, bias, *params = inputs
        ctx.save_for_backward(input, weight, offset, mask)
        ctx.params = params
        ctx.has_bias = bias is not None

    def deform_backward(ctx, grad_out):
        input, weight, offset, mask = ctx.saved_tensors
        grad_input, grad_weight, grad_offset, grad_mask, grad_bias = (
            torch.ops.maskrcnn_benchmark._deform_conv2d_backward(
                grad_out, input, weight, offset, mask, *ctx.params
            )
        )
        grads = (grad_input, grad_weight, grad_offset, grad_mask, grad_bias if ctx.has_bias else None)
        return grads + (None,) * len(ctx.params)

    torch.library.register_autograd(ns + "deform_conv2d", deform_backward, setup_context=deform_setup_context)


def _register_winograd(ns: str) -> None:
    if not hasattr(torch.ops.maskrcnn_benchmark, "winograd_input_transform"):  # an older build
        return

    def tiles(n, h, w, m):
        return n * ((h + m - 1) // m) * ((w + m - 1) // m)

    def input_fake(input, BT):
        torch._check(input.dim() == 4, lambda: "winograd_input_transform: input must be [N, C, H, W]")
        a = BT.shape[0]
        n, c, h, w = input.shape
        return input.new_empty(a * a, tiles(n, h, w, a - 2), c)

    def output_fake(M, AT, bias, N, H, W):
        torch._check(M.dim() == 3, lambda: "winograd_output_transform: M must be [a * a, T, K]")
        return M.new_empty(N, M.shape[2], H, W).contiguous(memory_format=torch.channels_last)

    def output_backward_fake(grad, AT):
        torch._check(grad.dim() == 4, lambda: "winograd_output_transform_backward: grad must be [N, K, H, W]")
        m = AT.shape[0]
        n, k, h, w = grad.shape
        return grad.new_empty((m + 2) ** 2, tiles(n, h, w, m), k)

    torch.library.register_fake(ns + "winograd_input_transform", input_fake)
    torch.library.register_fake(ns + "winograd_output_transform", output_fake)
    torch.library.register_fake(ns + "winograd_output_transform_backward", output_backward_fake)


def _warn_once(name: str, device_type: str, fn: Callable) -> Callable:
    warned = []

    @functools.wraps(fn)
    def kernel(*args):
        if not warned:
            warned.append(True)
            msg = (f"maskrcnn_benchmark::{name} has no compiled {device_type} kernel; using the portable "
                   f"PyTorch fallback (maskrcnn_benchmark/layers/_fallback.py), which is slower")
            logger.info(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return fn(*args)

    return kernel


def _register_fallback_kernels() -> None:
    """Registers :data:`._fallback.FALLBACK_KERNELS` for each op/device type lacking a compiled kernel."""
    from . import _fallback

    for name, fn in _fallback.FALLBACK_KERNELS.items():
        qualname = "maskrcnn_benchmark::" + name
        if not hasattr(torch.ops.maskrcnn_benchmark, name):  # e.g. an older build without deform_conv2d
            continue
        for device_type in FALLBACK_DEVICE_TYPES:
            key = device_type.upper() if device_type != "mps" else "MPS"
            if (name, device_type) in _fallbacks or torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key):
                continue
            try:
                torch.library.register_kernel(qualname, device_type, _warn_once(name, device_type, fn))
            except Exception as e:  # pragma: no cover - a torch build without this device type
                logger.info("could not register the %s fallback of %s: %s", device_type, qualname, e)
                continue
            _fallbacks[(name, device_type)] = fn


# "CUDA: registered at /path/csrc/cuda/nms_kernel.cu:120 :: (...) [ boxed unboxed ]"
_DUMP_LINE = re.compile(r"^(\w+): registered at (.+?):\d+(?: ::|\s*\[|$)")


def has_compiled_kernel(op_name: str, dispatch_key: str) -> bool:
    """True when ``maskrcnn_benchmark::<op_name>`` has a kernel compiled into ``_C`` for the key.

    ``dispatch_key``: "CPU", "CUDA", "AutocastCPU", "AutocastCUDA" (or "Autocast", its alias).
    Unlike ``torch._C._dispatch_has_kernel_for_dispatch_key``, a portable Python kernel registered
    by this module (:mod:`._fallback`) does not count: the registration must come from a C++/CUDA
    source file. False when the extension is not built.
    """
    if not _try_load() or not hasattr(torch.ops.maskrcnn_benchmark, op_name):
        return False
    key = "AutocastCUDA" if dispatch_key == "Autocast" else dispatch_key
    for line in torch._C._dispatch_dump(f"maskrcnn_benchmark::{op_name}").splitlines():
        match = _DUMP_LINE.match(line.strip())
        if match and match.group(1) == key:
            return not match.group(2).endswith(".py")
    return False


def registered_fallbacks() -> Dict[tuple, Callable]:
    """{(op name, device type): portable kernel} registered for devices without a compiled kernel."""
    _try_load()
    return dict(_fallbacks)


_try_load()
