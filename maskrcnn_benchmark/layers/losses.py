"""Losses shared by the dense heads (one home each; the compiled focal loss lives in
``layers.sigmoid_focal_loss``).

Everything here is computed from logits or from boxes with guarded denominators, so saturated
logits (|x| ~ 100) and degenerate boxes give finite values and gradients.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from maskrcnn_benchmark.structures.box_ops import inclusive_boxes

from .box_iou import elementwise_giou, elementwise_iou

__all__ = ["giou_loss", "iou_loss", "negative_bce", "quality_focal_loss", "smooth_l1_loss"]


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}; expected 'none', 'sum' or 'mean'")


def giou_loss(pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
              reduction: str = "sum", plus_one: bool = False) -> torch.Tensor:
    """``weight * (1 - GIoU(pred, target))``.

    Args:
        pred: Tensor[N, 4] predicted xyxy boxes (may be degenerate: x2 < x1 is handled).
        target: Tensor[N, 4] target xyxy boxes.
        weight: optional Tensor[N] per-box weight.
        reduction: ``"sum"`` (default), ``"mean"`` or ``"none"`` (Tensor[N]).
        plus_one: the original releases' ``GIoULoss`` (``MODEL.LEGACY_PLUS_ONE``): it decodes into
            inclusive "+1" boxes (far sides ``x2 - 1``, ``y2 - 1`` of these continuous ones), clamps the
            prediction's ``x2, y2`` to at least its ``x1, y1``, and takes areas, intersection and
            enclosing box as ``(x2 - x1) * (y2 - y1)`` with no "+1": the GIoU of both boxes made 1 px
            smaller (:func:`~maskrcnn_benchmark.structures.box_ops.inclusive_boxes`).
    Returns:
        scalar (or Tensor[N]); 0 (with a graph to ``pred``) when N == 0.
    """
    if pred.shape != target.shape or (pred.numel() and pred.shape[-1] != 4):
        raise ValueError(f"giou_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "must both be [N, 4]")
    target = target.to(pred.dtype)
    if plus_one:
        pred, target = inclusive_boxes(pred), inclusive_boxes(target)
        pred = torch.cat([pred[:, :2], torch.maximum(pred[:, :2], pred[:, 2:])], dim=1)
    loss = 1.0 - elementwise_giou(pred, target)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def quality_focal_loss(logits: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor,
                       gamma: float = 2.0, reduction: str = "sum") -> torch.Tensor:
    """Quality focal loss of Dynamic ATSS (GFL form), computed from logits.

    With ``p = sigmoid(x)`` and the soft target ``t`` = ``quality`` at the assigned class of a
    positive anchor and 0 for every other (anchor, class):
    ``loss = |t - p|^gamma * BCE(x, t)``, i.e.
    positives' class: ``-|q - p|^gamma * [q log p + (1 - q) log(1 - p)]``;
    everything else: ``-p^gamma * log(1 - p)``. Anchors labelled -1 contribute nothing.
    ``BCE`` is ``binary_cross_entropy_with_logits``, so saturated logits never give inf / NaN.

    Args:
        logits: Tensor[N, C].
        labels: Tensor[N] int; 1..C positive class, 0 background, -1 ignored.
        quality: Tensor[N] soft targets in [0, 1] (read at positives only; no gradient flows to it).
        gamma: focusing exponent (>= 1 keeps the gradient finite at ``p = t``).
        reduction: ``"sum"`` (default), ``"mean"`` or ``"none"`` (Tensor[N, C]).
    """
    if logits.dim() != 2 or labels.shape[0] != logits.shape[0] or quality.shape[0] != logits.shape[0]:
        raise ValueError(f"quality_focal_loss: logits {tuple(logits.shape)}, labels "
                         f"{tuple(labels.shape)}, quality {tuple(quality.shape)} do not match")
    num_classes = logits.shape[1]
    labels = labels.to(torch.int64)
    classes = torch.arange(1, num_classes + 1, device=logits.device)
    is_target = labels[:, None] == classes[None, :]
    target = torch.where(is_target, quality.detach().to(logits.dtype)[:, None],
                         logits.new_zeros(()))
    prob = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = loss * (target - prob).abs().pow(gamma)
    loss = loss * (labels >= 0).to(loss.dtype)[:, None]
    return _reduce(loss, reduction)


def smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, beta: float = 1.0 / 9,
                   reduction: str = "sum") -> torch.Tensor:
    """Smooth L1: ``0.5 d^2 / beta`` for ``|d| < beta``, ``|d| - 0.5 beta`` otherwise (L1 if beta == 0)."""
    diff = (input - target).abs()
    if beta <= 0:
        loss = diff
    else:
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return _reduce(loss, reduction)


IOU_LOSS_TYPES = ("iou", "linear_iou", "giou")


def iou_loss(pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
             loss_type: str = "iou", reduction: str = "sum", eps: float = 1e-6) -> torch.Tensor:
    """The FCOS ``IOULoss`` family on xyxy boxes (no "+1" smoothing of the original).

    ``loss_type``: ``"iou"`` -> ``-log(max(IoU, eps))``; ``"linear_iou"`` -> ``1 - IoU``;
    ``"giou"`` -> ``1 - GIoU`` (same as :func:`giou_loss`).

    Args:
        pred, target: Tensor[N, 4] xyxy boxes; weight: optional Tensor[N].
        reduction: ``"sum"`` (default), ``"mean"`` or ``"none"``.
    """
    if loss_type not in IOU_LOSS_TYPES:
        raise ValueError(f"iou_loss: loss_type must be one of {IOU_LOSS_TYPES}, got {loss_type!r}")
    if loss_type == "giou":
        return giou_loss(pred, target, weight, reduction)
    if pred.shape != target.shape or (pred.numel() and pred.shape[-1] != 4):
        raise ValueError(f"iou_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "must both be [N, 4]")
    iou = elementwise_iou(pred, target.to(pred.dtype))
    loss = -torch.log(iou.clamp(min=eps)) if loss_type == "iou" else 1.0 - iou
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def negative_bce(prob: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``BCE(prob, 0) = -log(1 - prob)`` with ``1 - prob`` clamped at ``eps`` (finite value and
    gradient for ``prob`` -> 1). Tensor of any shape -> same shape."""
    return -torch.log((1.0 - prob).clamp(min=eps))
