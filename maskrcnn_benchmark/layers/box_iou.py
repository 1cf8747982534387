"""Pairwise IoU of two box sets (compiled kernel in csrc/cpu/box_iou_kernel.cpp)."""
from __future__ import annotations

import torch

from ._ops import load_ops
from .nms import check_tensor_args, cpu_half_as_float

__all__ = ["box_iou"]


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU matrix of two box sets.

    Args:
        boxes1: [N, 4] float32/float64 boxes, continuous x1, y1, x2, y2 (no "+1"); float16 / bfloat16 on
            the CPU are computed in float32 (the result has the input dtype, except under CPU
            autocast, whose op policy, as the ``Autocast`` kernel's on CUDA, returns float32).
        boxes2: [M, 4] boxes of the same dtype and device.

    Returns:
        [N, M] IoU; 0 where the union is 0 (never NaN). Not differentiable (use
        ``structures.box_ops`` for differentiable box overlaps).
    """
    check_tensor_args("box_iou", boxes1=boxes1, boxes2=boxes2)
    dtype = boxes1.dtype
    if dtype in (torch.float16, torch.bfloat16) and boxes1.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        dtype = torch.float32
    boxes1, boxes2 = cpu_half_as_float(boxes1, boxes2)
    return load_ops().box_iou(boxes1, boxes2).to(dtype)
