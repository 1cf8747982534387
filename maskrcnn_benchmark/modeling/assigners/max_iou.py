"""Max-IoU matching (the RetinaNet / RPN ``Matcher`` of maskrcnn-benchmark), vectorised over GTs."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from maskrcnn_benchmark.layers import box_iou
from maskrcnn_benchmark.structures.box_ops import box_centers

from .base import CENTER_MARGIN, BaseAssigner, GTBatch, Predictions, centers_inside, gather_gt

__all__ = ["MaxIoUAssigner"]


class MaxIoUAssigner(BaseAssigner):
    """Each anchor takes the GT of highest IoU (ties: lowest GT index).

    - max IoU >= ``fg_iou_threshold``: positive (label of that GT);
    - max IoU < ``bg_iou_threshold``: background (0);
    - in between: ignored (-1).
    - ``allow_low_quality_matches`` (the RetinaNet setting): for every GT, the anchors whose IoU
      with it equals the GT's highest IoU become positive, for *their own* best GT (as the
      original ``Matcher``, which restores the anchor's argmax match). Only GTs whose highest IoU
      is > 0 take part: the original would turn every anchor with IoU 0 into a positive for a GT
      that overlaps no anchor.

    - ``require_center_inside`` (the ATSS release's ``POSITIVE_TYPE: IoU``; off for RetinaNet):
      positives whose anchor centre is not inside their GT by more than ``center_margin`` (0.01;
      0.51 for the releases' "+1" geometry) become ignored (-1).

    ``quality`` is the
    IoU of a positive with its GT. Builds the dense ``[G, N]`` IoU matrix with the compiled
    ``box_iou`` (as the original); everything else is element-wise over it.
    """

    def __init__(self, fg_iou_threshold: float = 0.5, bg_iou_threshold: float = 0.4,
                 allow_low_quality_matches: bool = True, require_center_inside: bool = False,
                 center_margin: float = CENTER_MARGIN):
        if bg_iou_threshold > fg_iou_threshold:
            raise ValueError(f"MaxIoUAssigner: bg_iou_threshold ({bg_iou_threshold}) > "
                             f"fg_iou_threshold ({fg_iou_threshold})")
        self.fg_iou_threshold = float(fg_iou_threshold)
        self.bg_iou_threshold = float(bg_iou_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        self.require_center_inside = bool(require_center_inside)
        self.center_margin = float(center_margin)

    @classmethod
    def from_config(cls, cfg) -> "MaxIoUAssigner":
        """Builds from ``cfg.MODEL.RETINANET`` (FG_IOU_THRESHOLD, BG_IOU_THRESHOLD)."""
        r = cfg.MODEL.RETINANET
        return cls(r.FG_IOU_THRESHOLD, r.BG_IOU_THRESHOLD, allow_low_quality_matches=True)

    def __repr__(self) -> str:
        return (f"MaxIoUAssigner(fg_iou_threshold={self.fg_iou_threshold}, "
                f"bg_iou_threshold={self.bg_iou_threshold}, "
                f"allow_low_quality_matches={self.allow_low_quality_matches}, "
                f"require_center_inside={self.require_center_inside})")

    tuning_keys = ("MODEL.RETINANET.FG_IOU_THRESHOLD", "MODEL.RETINANET.ANCHOR_SIZES",
                   "MODEL.RETINANET.ASPECT_RATIOS", "INPUT.MIN_SIZE_TRAIN")

    def _assign(self, anchors_per_level: List[Tensor], anchors: Tensor, gt: GTBatch,
                predictions: Optional[Predictions]):
        b, g = gt.valid.shape
        n = anchors.shape[0]
        ious = box_iou(gt.boxes.reshape(-1, 4), anchors).view(b, g, n)     # [B, G, N]
        ious = torch.where(gt.valid[..., None], ious, -1.0)   # padding never the best GT
        best_iou, best_gt = ious.max(dim=1)                                      # [B, N]
        pos = best_iou >= self.fg_iou_threshold
        ignore = (best_iou >= self.bg_iou_threshold) & ~pos
        if self.allow_low_quality_matches:
            gt_best = ious.amax(dim=2, keepdim=True)                             # [B, G, 1]
            pos |= ((ious == gt_best) & (gt_best > 0)).any(dim=1)
            ignore &= ~pos
        if self.require_center_inside:
            inside = centers_inside(box_centers(anchors)[None], gather_gt(gt.boxes, best_gt), self.center_margin)
            ignore |= pos & ~inside
            pos &= inside
        return torch.where(pos, best_gt, -1), best_iou.clamp(min=0), ignore
