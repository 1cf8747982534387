"""Sigmoid focal loss (Lin et al., 2017) with a compiled forward and backward
(csrc/cpu/sigmoid_focal_loss_kernel.cpp)."""
from __future__ import annotations

import torch
from torch import nn

from ._ops import load_ops

__all__ = ["sigmoid_focal_loss", "SigmoidFocalLoss"]


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Element-wise sigmoid focal loss, computed stably from logits.

    With p = sigmoid(logits[i, c]): for c == targets[i] - 1 the loss is
    ``-alpha * (1 - p)^gamma * log(p)``; for the other columns ``-(1 - alpha) * p^gamma * log(1 - p)``.

    Args:
        logits: [N, C] float32/float64 classification logits.
        targets: [N] int64/int32 labels: 1..C foreground class (column target - 1 is positive),
            0 background (all columns negative), -1 ignored (the whole row is 0).
        gamma: focusing parameter (>= 0).
        alpha: weight of the positive term (negatives get 1 - alpha).

    Returns:
        [N, C] loss, differentiable w.r.t. ``logits``.
    """
    if logits.device != targets.device:
        raise ValueError(
            f"sigmoid_focal_loss: targets must be on the device of logits ({logits.device}), got {targets.device}"
        )
    return load_ops().sigmoid_focal_loss(logits, targets, float(gamma), float(alpha))


class SigmoidFocalLoss(nn.Module):
    """Summed sigmoid focal loss: ``forward(logits[N, C], targets[N]) -> scalar``."""

    def __init__(self, gamma: float, alpha: float):
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(logits, targets, self.gamma, self.alpha).sum()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"
