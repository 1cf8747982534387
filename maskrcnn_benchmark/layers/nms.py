"""Non-maximum suppression (compiled kernels in csrc/cpu/nms_kernel.cpp)."""
from __future__ import annotations

import torch

from ._ops import load_ops

__all__ = ["nms", "batched_nms"]


def _check_devices(op: str, boxes: torch.Tensor, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t.device != boxes.device:
            raise ValueError(f"{op}: {name} must be on the device of boxes ({boxes.device}), got {t.device}")


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: [N, 4] float32/float64 boxes, continuous x1, y1, x2, y2 (no "+1").
        scores: [N] floating scores.
        iou_threshold: a box is suppressed when its IoU with a kept box is > iou_threshold.

    Returns:
        [K] int64 indices of the kept boxes, in decreasing score order (ties keep input order).
        Not differentiable.
    """
    _check_devices("nms", boxes, scores=scores)
    return load_ops().nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-aware NMS: boxes with different ``idxs`` never suppress each other.

    Args:
        boxes: [N, 4] float32/float64 boxes, x1, y1, x2, y2.
        scores: [N] floating scores.
        idxs: [N] integer category (or image/level) of each box; converted to int64.
        iou_threshold: suppression threshold (IoU > threshold suppresses).

    Returns:
        [K] int64 indices of the kept boxes, in decreasing score order (ties keep input order).
    """
    _check_devices("batched_nms", boxes, scores=scores, idxs=idxs)
    if idxs.dtype != torch.int64 and not idxs.is_floating_point() and not idxs.is_complex():
        idxs = idxs.to(torch.int64)
    return load_ops().batched_nms(boxes, scores, idxs, float(iou_threshold))
