"""Assignment of a batch: the targets padded to one :class:`GTBatch`, one batched assigner call.

This is the one assignment step of every dense head (``DenseHead.assign`` calls it under
``torch.no_grad``); the loss functions receive its :class:`BatchAssignment`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from maskrcnn_benchmark.structures.bounding_box import BoxList

from .base import BatchAssignment, GTBatch, Predictions

__all__ = ["BatchAssignment", "GTBatch", "assign_batch", "pad_targets"]


def pad_targets(targets: Sequence[BoxList], device=None, dtype=torch.float32) -> GTBatch:
    """The targets' boxes and ``labels`` padded to the batch's largest GT count.

    The count comes from the BoxLists' shapes (known on the host), so no synchronisation.

    Args:
        targets: per image BoxList with a ``labels`` field (1..C).
        device, dtype: of the padded boxes (default: the first target's device).
    Returns:
        :class:`GTBatch` (boxes [B, G, 4], labels [B, G], valid [B, G]; ``G = max(1, max G_i)``).
    """
    return GTBatch.from_lists([t.bbox for t in targets], [t.get_field("labels") for t in targets],
                              device=device, dtype=dtype)


@torch.no_grad()
def assign_batch(assigner, priors_per_level: Sequence[Tensor], targets: "Sequence[BoxList] | GTBatch",
                 predictions: Optional[Predictions] = None) -> BatchAssignment:
    """Runs the batched ``assigner.assign`` on every image at once.

    Args:
        assigner: a :class:`~.base.BaseAssigner`.
        priors_per_level: list over levels of Tensor[N_l, 4] prior boxes (shared by the images;
            points as zero-size boxes).
        targets: per image BoxList with a ``labels`` field (1..C), or an already padded
            :class:`GTBatch`.
        predictions: batched :class:`Predictions` (``boxes`` [B, N, 4], ``scores`` [B, N, C],
            either may be None) for prediction-aware assigners.
    Returns:
        :class:`BatchAssignment`.
    """
    gt = targets if isinstance(targets, GTBatch) else pad_targets(
        targets, device=priors_per_level[0].device, dtype=priors_per_level[0].dtype)
    return assigner.assign(priors_per_level, gt, predictions)
