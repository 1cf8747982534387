"""ATSS assignment (Zhang et al., CVPR 2020) and the original release's other positive types."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from maskrcnn_benchmark.structures.box_ops import box_area, box_centers, elementwise_iou, pairwise_iou

from .base import (AssignResult, BaseAssigner, centers_inside, resolve_conflicts,
                   select_candidates, unbiased_std)

__all__ = ["ATSSAssigner", "POSITIVE_TYPES"]

POSITIVE_TYPES = ("ATSS", "SSC", "TOPK", "IoU")
DEFAULT_SSC_SCALE_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0),
                            (512.0, math.inf))


class ATSSAssigner(BaseAssigner):
    """Adaptive training sample selection, plus the ``SSC`` / ``TOPK`` / ``IoU`` positive types.

    ``positive_type``:

    - ``"ATSS"``: per GT, the ``topk * anchors_per_location`` anchors of every level with the
      nearest centres (L2) are candidates; threshold = mean + unbiased std of the candidates'
      IoUs; positive if IoU >= threshold and the anchor centre is inside the GT
      (min(l, t, r, b) > 0.01). An anchor positive for several GTs goes to the highest IoU
      (ties: lowest GT index). With ``keep_best_candidate`` (config
      ``MODEL.ATSS.KEEP_BEST_CANDIDATE``, default False = the original), a GT left with no
      positive (mean + std above every candidate, or no candidate inside) gets its in-box candidate
      of highest IoU (ties: first in level/distance order) as positive; a GT with no candidate
      centre inside it (smaller than a stride) still gets none.
    - ``"SSC"``: FCOS rule: anchor centre inside the GT (> 0.01) and max(l, t, r, b) within
      ``ssc_scale_ranges[level]`` (inclusive); several GTs: the smallest area wins (ties: lowest
      index).
    - ``"TOPK"``: as the original release: per GT, the ``topk`` anchors (over all levels) of highest
      ``IoU - d / max(d) / 1000`` (d: centre distance, max over all anchor/GT pairs, a tie-break
      towards nearer anchors), kept if the anchor centre is inside the GT; several GTs: highest
      IoU. ``k = min(topk, N)`` (not multiplied by ``anchors_per_location``, as the original).
    - ``"IoU"``: RetinaNet matcher: max IoU over GTs >= ``fg_iou_threshold`` positive,
      < ``bg_iou_threshold`` background, in between ignored (-1); low-quality matches on (each GT's
      highest-IoU anchors become positive for their own best GT; only for GTs whose best IoU is
      > 0, where the original would make every anchor positive); positives whose centre is
      outside the matched GT become ignored (-1).

    ``quality`` is the IoU of the anchor with its assigned GT for every type. ``gt_inds`` is set
    for positives only (ignored anchors have ``gt_inds`` -1).

    TOPK and IoU need every anchor's IoU with every GT and use the compiled ``pairwise_iou``
    (``[G, N]``); ATSS and SSC never build an ``[N, G]`` float matrix of IoUs (SSC works level by
    level on ``[N_l, G]`` masks).
    """

    def __init__(
        self,
        topk: int = 9,
        anchors_per_location: int = 1,
        positive_type: str = "ATSS",
        keep_best_candidate: bool = False,
        fg_iou_threshold: float = 0.5,
        bg_iou_threshold: float = 0.4,
        ssc_scale_ranges: Sequence[Tuple[float, float]] = DEFAULT_SSC_SCALE_RANGES,
    ):
        if positive_type not in POSITIVE_TYPES:
            raise ValueError(f"ATSSAssigner: positive_type must be one of {POSITIVE_TYPES}, "
                             f"got {positive_type!r}")
        if topk < 1 or anchors_per_location < 1:
            raise ValueError(f"ATSSAssigner: topk ({topk}) and anchors_per_location "
                             f"({anchors_per_location}) must be >= 1")
        if bg_iou_threshold > fg_iou_threshold:
            raise ValueError(f"ATSSAssigner: bg_iou_threshold ({bg_iou_threshold}) > "
                             f"fg_iou_threshold ({fg_iou_threshold})")
        self.topk = int(topk)
        self.anchors_per_location = int(anchors_per_location)
        self.positive_type = positive_type
        self.keep_best_candidate = bool(keep_best_candidate)
        self.fg_iou_threshold = float(fg_iou_threshold)
        self.bg_iou_threshold = float(bg_iou_threshold)
        self.ssc_scale_ranges = tuple((float(lo), float(hi)) for lo, hi in ssc_scale_ranges)

    @classmethod
    def from_config(cls, cfg) -> "ATSSAssigner":
        """Builds from ``cfg.MODEL.ATSS`` (TOPK, POSITIVE_TYPE, KEEP_BEST_CANDIDATE, anchors)."""
        a = cfg.MODEL.ATSS
        return cls(topk=a.TOPK,
                   anchors_per_location=len(a.ASPECT_RATIOS) * a.SCALES_PER_OCTAVE,
                   positive_type=a.POSITIVE_TYPE,
                   keep_best_candidate=a.KEEP_BEST_CANDIDATE)

    def __repr__(self) -> str:
        return (f"ATSSAssigner(topk={self.topk}, anchors_per_location={self.anchors_per_location}, "
                f"positive_type={self.positive_type!r}, "
                f"keep_best_candidate={self.keep_best_candidate})")

    def _assign(self, anchors_per_level: List[Tensor], anchors: Tensor, gt_boxes: Tensor,
                gt_labels: Tensor, pred_boxes: Optional[Tensor]) -> AssignResult:
        if self.positive_type == "ATSS":
            return self._assign_atss(anchors_per_level, anchors, gt_boxes, gt_labels)
        if self.positive_type == "SSC":
            return self._assign_ssc(anchors_per_level, anchors, gt_boxes, gt_labels)
        if self.positive_type == "TOPK":
            return self._assign_topk(anchors, gt_boxes, gt_labels)
        return self._assign_iou(anchors, gt_boxes, gt_labels)

    # ---- ATSS ------------------------------------------------------------------------------
    def _assign_atss(self, anchors_per_level, anchors, gt_boxes, gt_labels) -> AssignResult:
        cand_idx = select_candidates(anchors_per_level, box_centers(gt_boxes),
                                     self.topk * self.anchors_per_location)      # [G, K]
        cand_boxes = anchors[cand_idx]                                           # [G, K, 4]
        ious = elementwise_iou(cand_boxes, gt_boxes[:, None, :])                 # [G, K]
        threshold = ious.mean(dim=1) + unbiased_std(ious, dim=1)                 # [G]
        inside = centers_inside(box_centers(cand_boxes.view(-1, 4)).view(*cand_idx.shape, 2),
                                gt_boxes)
        is_pos = (ious >= threshold[:, None]) & inside
        if self.keep_best_candidate:
            is_pos = _add_best_candidate(is_pos, ious, inside)
        gt_inds, pair_gt, pair_k = resolve_conflicts(cand_idx, is_pos, ious, anchors.shape[0])
        quality = torch.zeros(anchors.shape[0], dtype=anchors.dtype, device=anchors.device)
        quality[cand_idx[pair_gt, pair_k]] = ious[pair_gt, pair_k]
        return AssignResult.from_gt_inds(gt_inds, gt_labels, quality)

    # ---- SSC (FCOS scale ranges) -----------------------------------------------------------
    def _assign_ssc(self, anchors_per_level, anchors, gt_boxes, gt_labels) -> AssignResult:
        if len(self.ssc_scale_ranges) < len(anchors_per_level):
            raise ValueError(f"ATSSAssigner(SSC): {len(self.ssc_scale_ranges)} scale ranges for "
                             f"{len(anchors_per_level)} levels")
        areas = box_area(gt_boxes)[None]                                         # [1, G]
        gt_inds = []
        for level, level_anchors in enumerate(anchors_per_level):
            lo, hi = self.ssc_scale_ranges[level]
            pts = box_centers(level_anchors)
            ltrb = torch.stack((pts[:, None, 0] - gt_boxes[None, :, 0],
                                pts[:, None, 1] - gt_boxes[None, :, 1],
                                gt_boxes[None, :, 2] - pts[:, None, 0],
                                gt_boxes[None, :, 3] - pts[:, None, 1]), dim=2)  # [N_l, G, 4]
            max_side = ltrb.amax(dim=2)
            ok = (ltrb.amin(dim=2) > 0.01) & (max_side >= lo) & (max_side <= hi)
            masked_area = torch.where(ok, areas, math.inf)
            best_area, best_gt = masked_area.min(dim=1)
            gt_inds.append(torch.where(torch.isinf(best_area), -1, best_gt))
        gt_inds = torch.cat(gt_inds)
        return self._result_with_anchor_iou(gt_inds, anchors, gt_boxes, gt_labels)

    # ---- TOPK ------------------------------------------------------------------------------
    def _assign_topk(self, anchors, gt_boxes, gt_labels) -> AssignResult:
        ious = pairwise_iou(gt_boxes, anchors)                                   # [G, N]
        gc, ac = box_centers(gt_boxes), box_centers(anchors)
        dist = (gc[:, None, 0] - ac[None, :, 0]).square_()                      # [G, N]
        dist += (gc[:, None, 1] - ac[None, :, 1]).square_()
        dist.sqrt_()
        score = ious - dist / dist.max().clamp(min=1e-12) / 1000
        del dist
        k = min(self.topk, anchors.shape[0])
        cand_idx = score.topk(k, dim=1).indices                                  # [G, k]
        del score
        inside = centers_inside(box_centers(anchors)[cand_idx], gt_boxes)
        cand_ious = ious.gather(1, cand_idx)
        gt_inds, pair_gt, pair_k = resolve_conflicts(cand_idx, inside, cand_ious,
                                                     anchors.shape[0])
        quality = torch.zeros(anchors.shape[0], dtype=anchors.dtype, device=anchors.device)
        quality[cand_idx[pair_gt, pair_k]] = cand_ious[pair_gt, pair_k]
        return AssignResult.from_gt_inds(gt_inds, gt_labels, quality)

    # ---- IoU (RetinaNet matcher) -----------------------------------------------------------
    def _assign_iou(self, anchors, gt_boxes, gt_labels) -> AssignResult:
        ious = pairwise_iou(gt_boxes, anchors)                                   # [G, N]
        best_gt = ious.argmax(dim=0)                                             # [N]
        best_iou = ious.gather(0, best_gt[None]).squeeze(0)
        pos = best_iou >= self.fg_iou_threshold
        ignore = (best_iou >= self.bg_iou_threshold) & ~pos
        # low-quality matches: each GT's highest-IoU anchors become positive (for their best GT)
        gt_best = ious.amax(dim=1, keepdim=True)                                 # [G, 1]
        low_quality = ((ious == gt_best) & (gt_best > 0)).any(dim=0)
        pos |= low_quality
        ignore &= ~pos
        matched = gt_boxes[best_gt]
        inside = centers_inside(box_centers(anchors), matched)
        ignore |= pos & ~inside
        pos &= inside
        gt_inds = torch.where(pos, best_gt, -1)
        result = AssignResult.from_gt_inds(gt_inds, gt_labels, torch.where(pos, best_iou, 0))
        result.labels[ignore] = -1
        return result

    def _result_with_anchor_iou(self, gt_inds, anchors, gt_boxes, gt_labels) -> AssignResult:
        quality = torch.zeros(anchors.shape[0], dtype=anchors.dtype, device=anchors.device)
        pos = gt_inds >= 0
        quality[pos] = elementwise_iou(anchors[pos], gt_boxes[gt_inds[pos]])
        return AssignResult.from_gt_inds(gt_inds, gt_labels, quality)


def _add_best_candidate(is_pos: Tensor, score: Tensor, inside: Tensor) -> Tensor:
    """Makes each GT's best in-box candidate positive when the GT has no positive.

    Args:
        is_pos, inside: Tensor[G, K] bool; score: Tensor[G, K].

    Returns:
        Tensor[G, K] bool.
    """
    needs = ~is_pos.any(dim=1) & inside.any(dim=1)                               # [G]
    best_k = torch.where(inside, score, float("-inf")).argmax(dim=1)             # [G]
    rows = needs.nonzero(as_tuple=True)[0]
    is_pos = is_pos.clone()
    is_pos[rows, best_k[rows]] = True
    return is_pos
