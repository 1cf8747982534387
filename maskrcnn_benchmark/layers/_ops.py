"""Lazy loading of the compiled operator library ``maskrcnn_benchmark._C``.

Importing this module never fails: if the extension is missing, the error is kept and raised by
:func:`load_ops` with the command that builds it. Loading the extension registers the operators
under ``torch.ops.maskrcnn_benchmark``; this module then adds their fake (meta) kernels, used by
``torch.compile``/``opcheck``, and the autograd formula of ``sigmoid_focal_loss``.

The extension has CPU kernels only. For every operator without a compiled kernel for a device
type in :data:`FALLBACK_DEVICE_TYPES`, the portable PyTorch kernel of :mod:`._fallback` is
registered for that device (slower; a warning names the op at its first use on the device). The
autograd formulas call the backward ops through the dispatcher, so they use the fallbacks too.
"""
from __future__ import annotations

import functools
import logging
import warnings
from typing import Callable, Dict, Optional

import torch

__all__ = ["BUILD_COMMAND", "FALLBACK_DEVICE_TYPES", "load_ops", "registered_fallbacks"]

logger = logging.getLogger(__name__)

# Device types (torch.library names) that get the portable kernels where no compiled one exists.
FALLBACK_DEVICE_TYPES = ("cuda", "xpu", "mps")
# (op name, device type) -> portable kernel registered by _register_fallback_kernels
_fallbacks: Dict[tuple, Callable] = {}

BUILD_COMMAND = "MAX_JOBS=2 python setup.py build_ext --inplace"

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
            "maskrcnn_benchmark._C (the compiled operators nms, batched_nms, box_iou, "
            "sigmoid_focal_loss) is not built or failed to load. Build it from the repository root "
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


def registered_fallbacks() -> Dict[tuple, Callable]:
    """{(op name, device type): portable kernel} registered for devices without a compiled kernel."""
    _try_load()
    return dict(_fallbacks)


_try_load()
