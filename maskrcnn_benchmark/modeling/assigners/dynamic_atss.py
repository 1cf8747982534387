"""Dynamic ATSS assignment: the ATSS candidates and threshold on prediction IoU + anchor IoU."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from maskrcnn_benchmark.layers import elementwise_iou

from .atss import CandidateThresholdAssigner
from .base import CENTER_MARGIN, Predictions, center_margin, unbiased_std

__all__ = ["DynamicATSSAssigner"]


class DynamicATSSAssigner(CandidateThresholdAssigner):
    """Dynamic ATSS: the ATSS routine (:class:`CandidateThresholdAssigner`) on ``P + Q``.

    On the candidates, ``P = IoU(predicted box, GT)`` and ``Q = IoU(anchor, GT)``; threshold
    ``t = mean(P) + mean(Q) + std(P) + std(Q)`` (unbiased stds, taken separately); positive if
    ``P + Q >= t`` and the anchor centre is inside the GT. An anchor positive for several GTs goes
    to the largest ``P + Q`` (ties: lowest GT index). ``quality`` = ``P`` with the assigned GT
    (the IoU-branch and QFL target), 0 elsewhere. With predictions equal to the anchors this is
    exactly ATSS.

    ``predictions.boxes`` (Tensor[B, N, 4], decoded predictions in level order) is required.
    """

    needs_predictions = True
    tuning_keys = ("MODEL.ATSS.TOPK", "MODEL.ATSS.ANCHOR_SIZES", "MODEL.ATSS.ANCHOR_STRIDES",
                   "INPUT.MIN_SIZE_TRAIN")

    def __init__(self, topk: int = 9, anchors_per_location: int = 1,
                 center_margin: float = CENTER_MARGIN):
        super().__init__(topk, anchors_per_location, keep_best_candidate=False,
                         center_margin=center_margin)

    @classmethod
    def from_config(cls, cfg, node: str = "ATSS") -> "DynamicATSSAssigner":
        """Builds from ``cfg.MODEL.<node>`` (default ``MODEL.ATSS``: TOPK and the anchors per
        location) and ``MODEL.LEGACY_PLUS_ONE`` (the centre margin)."""
        from maskrcnn_benchmark.utils.legacy_plus_one import legacy_plus_one_from_config

        a = cfg.MODEL[node]
        return cls(topk=a.TOPK, anchors_per_location=len(a.ASPECT_RATIOS) * a.SCALES_PER_OCTAVE,
                   center_margin=center_margin(legacy_plus_one_from_config(cfg)))

    def __repr__(self) -> str:
        return (f"DynamicATSSAssigner(topk={self.topk}, "
                f"anchors_per_location={self.anchors_per_location}, center_margin={self.center_margin})")

    def candidate_scores(self, cand_idx: Tensor, cand_anchors: Tensor, gt_boxes: Tensor,
                         predictions: Optional[Predictions]):
        gt = gt_boxes[..., None, :]
        image = torch.arange(cand_idx.shape[0], device=cand_idx.device).view(-1, 1, 1)
        p = elementwise_iou(predictions.boxes[image, cand_idx], gt)             # [B, G, K]
        q = elementwise_iou(cand_anchors, gt)                                    # [B, G, K]
        threshold = (p.mean(dim=-1) + q.mean(dim=-1)
                     + unbiased_std(p, dim=-1) + unbiased_std(q, dim=-1))         # [B, G]
        return p + q, threshold, p
