"""Assignment of a batch: the per-image assigner run over the images, results stacked.

This is the one assignment step of every dense head (``DenseHead.assign`` calls it under
``torch.no_grad``); the loss functions receive its :class:`BatchAssignment`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from maskrcnn_benchmark.structures.bounding_box import BoxList

from .base import AssignResult, Predictions

__all__ = ["BatchAssignment", "assign_batch"]


@dataclass
class BatchAssignment:
    """Assignment of the ``N`` priors of ``B`` images.

    Attributes:
        labels: Tensor[B, N] int64: class 1..C for positives, 0 background, -1 ignored.
        matched_gt: Tensor[B, N, 4] the assigned GT box of positives (zeros elsewhere).
        quality: Tensor[B, N] the assigner's quality target (0 where not positive).
        pos: Tensor[B, N] bool, the positives.
    """

    labels: Tensor
    matched_gt: Tensor
    quality: Tensor
    pos: Tensor


@torch.no_grad()
def assign_batch(assigner, priors_per_level: Sequence[Tensor], targets: Sequence[BoxList],
                 predictions: Optional[Predictions] = None) -> BatchAssignment:
    """Runs ``assigner`` on every image.

    Args:
        assigner: per-image assigner ``assigner(priors_per_level, gt_boxes, gt_labels,
            predictions) -> AssignResult`` (see ``BaseAssigner``).
        priors_per_level: list over levels of Tensor[N_l, 4] prior boxes (shared by the images;
            points as zero-size boxes).
        targets: per image BoxList with a ``labels`` field (1..C).
        predictions: batched :class:`Predictions` (``boxes`` [B, N, 4], ``scores`` [B, N, C],
            either may be None) for prediction-aware assigners; image ``i`` gets row ``i``.
    Returns:
        :class:`BatchAssignment`.
    """
    results: List[AssignResult] = []
    matched = []
    device = priors_per_level[0].device
    for i, t in enumerate(targets):
        gt = t.bbox.to(device)
        image_pred = None
        if predictions is not None:
            image_pred = Predictions(
                boxes=None if predictions.boxes is None else predictions.boxes[i],
                scores=None if predictions.scores is None else predictions.scores[i])
        res = assigner(priors_per_level, gt, t.get_field("labels").to(device), image_pred)
        results.append(res)
        m = torch.zeros(res.gt_inds.shape[0], 4, dtype=gt.dtype, device=device)
        pos = res.pos_mask
        m[pos] = gt[res.gt_inds[pos]]
        matched.append(m)
    return BatchAssignment(labels=torch.stack([r.labels for r in results]),
                           matched_gt=torch.stack(matched),
                           quality=torch.stack([r.quality for r in results]),
                           pos=torch.stack([r.pos_mask for r in results]))
