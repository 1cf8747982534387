"""Dynamic ATSS assignment: ATSS candidates ranked by prediction IoU + anchor IoU."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from maskrcnn_benchmark.structures.box_ops import box_centers, elementwise_iou

from .base import (AssignResult, BaseAssigner, centers_inside, resolve_conflicts,
                   select_candidates, unbiased_std)

__all__ = ["DynamicATSSAssigner"]


class DynamicATSSAssigner(BaseAssigner):
    """Dynamic ATSS: the ATSS threshold applied to ``P + Q``.

    Per GT, candidates are the ``topk * anchors_per_location`` anchors of every level with the
    nearest centres (as ATSS). On candidates, ``P = IoU(predicted box, GT)`` and
    ``Q = IoU(anchor, GT)``; threshold ``t = mean(P) + mean(Q) + std(P) + std(Q)`` (unbiased stds,
    taken separately); positive if ``P + Q >= t`` and the anchor centre is inside the GT
    (min(l, t, r, b) > 0.01). An anchor positive for several GTs goes to the largest ``P + Q``
    (ties: lowest GT index). ``quality`` = ``P`` with the assigned GT (the IoU-branch and QFL
    target), 0 elsewhere. With ``pred_boxes == anchors`` this is exactly ATSS.

    ``pred_boxes`` (Tensor[N, 4], decoded predictions in level order) is required and is detached.
    """

    def __init__(self, topk: int = 9, anchors_per_location: int = 1):
        if topk < 1 or anchors_per_location < 1:
            raise ValueError(f"DynamicATSSAssigner: topk ({topk}) and anchors_per_location "
                             f"({anchors_per_location}) must be >= 1")
        self.topk = int(topk)
        self.anchors_per_location = int(anchors_per_location)

    @classmethod
    def from_config(cls, cfg) -> "DynamicATSSAssigner":
        """Builds from ``cfg.MODEL.ATSS`` (TOPK and the anchors per location)."""
        a = cfg.MODEL.ATSS
        return cls(topk=a.TOPK, anchors_per_location=len(a.ASPECT_RATIOS) * a.SCALES_PER_OCTAVE)

    def __repr__(self) -> str:
        return (f"DynamicATSSAssigner(topk={self.topk}, "
                f"anchors_per_location={self.anchors_per_location})")

    def _check_pred_boxes(self, pred_boxes: Optional[Tensor]) -> None:
        if pred_boxes is None:
            raise ValueError("DynamicATSSAssigner needs pred_boxes: the decoded, detached box "
                             "predictions Tensor[N, 4] of the image's anchors (level order)")

    def _assign(self, anchors_per_level: List[Tensor], anchors: Tensor, gt_boxes: Tensor,
                gt_labels: Tensor, pred_boxes: Optional[Tensor]) -> AssignResult:
        cand_idx = select_candidates(anchors_per_level, box_centers(gt_boxes),
                                     self.topk * self.anchors_per_location)      # [G, K]
        cand_anchors = anchors[cand_idx]                                         # [G, K, 4]
        gt = gt_boxes[:, None, :]
        p = elementwise_iou(pred_boxes[cand_idx], gt)                            # [G, K]
        q = elementwise_iou(cand_anchors, gt)                                    # [G, K]
        threshold = (p.mean(dim=1) + q.mean(dim=1)
                     + unbiased_std(p, dim=1) + unbiased_std(q, dim=1))           # [G]
        score = p + q
        inside = centers_inside(box_centers(cand_anchors.view(-1, 4)).view(*cand_idx.shape, 2),
                                gt_boxes)
        is_pos = (score >= threshold[:, None]) & inside
        gt_inds, pair_gt, pair_k = resolve_conflicts(cand_idx, is_pos, score, anchors.shape[0])
        quality = torch.zeros(anchors.shape[0], dtype=anchors.dtype, device=anchors.device)
        quality[cand_idx[pair_gt, pair_k]] = p[pair_gt, pair_k]
        return AssignResult.from_gt_inds(gt_inds, gt_labels, quality)
