"""Non-maximum suppression (compiled kernels in csrc/cpu/nms_kernel.cpp)."""
from __future__ import annotations

import torch

from ._ops import load_ops

__all__ = ["nms", "batched_nms", "check_tensor_args", "cpu_half_as_float"]


def check_tensor_args(op: str, **args) -> None:
    """``TypeError`` naming the first of ``args`` (name -> value) that is not a tensor (e.g. None), then
    ``ValueError`` naming one on another device than the first."""
    for name, t in args.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    (first, ref), *others = args.items()
    for name, t in others:
        if t.device != ref.device:
            raise ValueError(f"{op}: {name} must be on the device of {first} ({ref.device}), got {t.device}")


def cpu_half_as_float(*tensors: torch.Tensor):
    """``tensors`` cast to float32 when any of them is a float16 / bfloat16 CPU tensor (the CPU
    kernels compute in float32 / float64, as torchvision accepts half there), else unchanged."""
    if any(t.device.type == "cpu" and t.dtype in (torch.float16, torch.bfloat16) for t in tensors):
        return tuple(t.float() if t.is_floating_point() else t for t in tensors)
    return tensors


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: [N, 4] float32/float64 boxes, continuous x1, y1, x2, y2 (no "+1"); float16 / bfloat16 on
            the CPU are computed in float32.
        scores: [N] floating scores.
        iou_threshold: a box is suppressed when its IoU with a kept box is > iou_threshold.

    Returns:
        [K] int64 indices of the kept boxes, in decreasing score order (ties keep input order).
        Not differentiable.
    """
    check_tensor_args("nms", boxes=boxes, scores=scores)
    boxes, scores = cpu_half_as_float(boxes, scores)
    return load_ops().nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-aware NMS: boxes with different ``idxs`` never suppress each other.

    Args:
        boxes: [N, 4] float32/float64 boxes, x1, y1, x2, y2 (float16 / bfloat16 on the CPU: see :func:`nms`).
        scores: [N] floating scores.
        idxs: [N] integer category (or image/level) of each box; converted to int64.
        iou_threshold: suppression threshold (IoU > threshold suppresses).

    Returns:
        [K] int64 indices of the kept boxes, in decreasing score order (ties keep input order).
    """
    check_tensor_args("batched_nms", boxes=boxes, scores=scores, idxs=idxs)
    boxes, scores = cpu_half_as_float(boxes, scores)
    if idxs.dtype != torch.int64 and not idxs.is_floating_point() and not idxs.is_complex():
        idxs = idxs.to(torch.int64)
    return load_ops().batched_nms(boxes, scores, idxs, float(iou_threshold))
