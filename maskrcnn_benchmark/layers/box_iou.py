"""Box overlaps, the one home of IoU and GIoU of ``x1, y1, x2, y2`` boxes (continuous pixel
coordinates, no legacy "+1": a box's width is ``x2 - x1``).

* :func:`box_iou`: the IoU of every pair of two box sets, by the compiled op (csrc/cpu/box_iou_kernel.cpp,
  csrc/cuda/box_iou_kernel.cu); not differentiable.
* :func:`elementwise_iou`, :func:`elementwise_giou`, :func:`pairwise_giou`: plain torch, cheap and
  differentiable (the IoU / GIoU losses, the assigners' quality of matched pairs).

Unions (and GIoU enclosing areas) are clamped at ``eps`` so zero-area boxes give IoU 0, never NaN.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._ops import load_ops
from .nms import check_tensor_args, cpu_half_as_float

__all__ = ["box_iou", "elementwise_iou", "elementwise_giou", "pairwise_giou"]

_EPS = 1e-7


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU matrix of two box sets.

    Args:
        boxes1: [N, 4] float32/float64 boxes, continuous x1, y1, x2, y2 (no "+1"); float16 / bfloat16 on
            the CPU are computed in float32 (the result has the input dtype, except under CPU
            autocast, whose op policy, as the ``Autocast`` kernel's on CUDA, returns float32).
        boxes2: [M, 4] boxes of the same dtype and device.

    Returns:
        [N, M] IoU; 0 where the union is 0 (never NaN). Not differentiable (use
        :func:`elementwise_iou` on broadcast boxes for differentiable overlaps).
    """
    check_tensor_args("box_iou", boxes1=boxes1, boxes2=boxes2)
    dtype = boxes1.dtype
    if dtype in (torch.float16, torch.bfloat16) and boxes1.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        dtype = torch.float32
    boxes1, boxes2 = cpu_half_as_float(boxes1, boxes2)
    return load_ops().box_iou(boxes1, boxes2).to(dtype)


def _intersection_union(boxes1: Tensor, boxes2: Tensor, eps: float):
    """Intersection and (clamped) union of broadcastable ``[..., 4]`` box tensors."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (area1 + area2 - inter).clamp(min=eps)
    return inter, union


def _giou_from(boxes1: Tensor, boxes2: Tensor, eps: float) -> Tensor:
    inter, union = _intersection_union(boxes1, boxes2, eps)
    lt = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = (wh[..., 0] * wh[..., 1]).clamp(min=eps)
    return inter / union - (enclosing - union) / enclosing


def elementwise_iou(boxes1: Tensor, boxes2: Tensor, eps: float = _EPS) -> Tensor:
    """IoU of matching rows (also works on any broadcastable ``[..., 4]`` shapes).

    Args:
        boxes1: Tensor[N, 4]; boxes2: Tensor[N, 4].
        eps: lower clamp of the union, so two zero-area boxes give 0, not NaN.

    Returns:
        Tensor[N]: ``IoU(boxes1[i], boxes2[i])`` in [0, 1].
    """
    inter, union = _intersection_union(boxes1, boxes2, eps)
    return inter / union


def elementwise_giou(boxes1: Tensor, boxes2: Tensor, eps: float = _EPS) -> Tensor:
    """Generalised IoU of matching rows (also on broadcastable ``[..., 4]`` shapes).

    ``GIoU = IoU - (C - U) / C`` with ``C`` the area of the smallest enclosing box; unions and
    enclosing areas are clamped at ``eps``.

    Args:
        boxes1: Tensor[N, 4]; boxes2: Tensor[N, 4].

    Returns:
        Tensor[N]: GIoU in [-1, 1].
    """
    return _giou_from(boxes1, boxes2, eps)


def pairwise_giou(boxes1: Tensor, boxes2: Tensor, eps: float = _EPS) -> Tensor:
    """Generalised IoU of every pair.

    Args:
        boxes1: Tensor[N, 4]; boxes2: Tensor[M, 4].

    Returns:
        Tensor[N, M]: GIoU in [-1, 1].
    """
    return _giou_from(boxes1[:, None, :], boxes2[None, :, :], eps)
