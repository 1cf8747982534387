"""ATSS assignment (Zhang et al., CVPR 2020), the family it shares with Dynamic ATSS, and the
factory of the original release's ``POSITIVE_TYPE`` values.

One class per strategy (no strategy string inside a class):

- :class:`ATSSAssigner` (``"ATSS"``) and
  :class:`~maskrcnn_benchmark.modeling.assigners.dynamic_atss.DynamicATSSAssigner` are
  :class:`CandidateThresholdAssigner` s: one candidate / threshold routine, they differ only in
  the score they threshold (:meth:`CandidateThresholdAssigner.candidate_scores`);
- :class:`TopKAssigner` (``"TOPK"``);
- ``"SSC"`` is :class:`~maskrcnn_benchmark.modeling.assigners.fcos.SSCAssigner` (the FCOS rule);
- ``"IoU"`` is :class:`~maskrcnn_benchmark.modeling.assigners.max_iou.MaxIoUAssigner` with
  ``require_center_inside``.

:func:`build_positive_type_assigner` maps a ``POSITIVE_TYPE`` to its class.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from maskrcnn_benchmark.layers import box_iou, elementwise_iou
from maskrcnn_benchmark.structures.box_ops import box_centers

from .base import (CENTER_MARGIN, BaseAssigner, GTBatch, Predictions, center_margin, centers_inside,
                   resolve_conflicts, scatter_pairs, select_candidates, unbiased_std)
from .fcos import SSCAssigner
from .max_iou import MaxIoUAssigner

__all__ = ["ATSSAssigner", "CandidateThresholdAssigner", "TopKAssigner", "POSITIVE_TYPES",
           "DEFAULT_SSC_SCALE_RANGES", "build_positive_type_assigner", "add_best_candidate"]

POSITIVE_TYPES = ("ATSS", "SSC", "TOPK", "IoU")
DEFAULT_SSC_SCALE_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0),
                            (512.0, math.inf))


def _check_topk(name: str, topk: int, anchors_per_location: int) -> None:
    if topk < 1 or anchors_per_location < 1:
        raise ValueError(f"{name}: topk ({topk}) and anchors_per_location "
                         f"({anchors_per_location}) must be >= 1")


class CandidateThresholdAssigner(BaseAssigner):
    """The ATSS routine: per GT, the ``topk * anchors_per_location`` anchors of every level with
    the nearest centres (L2) are candidates; a candidate is positive if its score reaches the GT's
    threshold and its centre is inside the GT (min(l, t, r, b) > 0.01); an anchor positive for
    several GTs goes to the highest score (ties: lowest GT index).

    Subclasses define :meth:`candidate_scores` (the score, threshold and quality target).

    Args:
        topk: candidates per level and anchor of a location.
        anchors_per_location: A.
        keep_best_candidate: a GT left with no positive gets its in-box candidate of highest
            score (ties: first in level/distance order); a GT with no candidate centre inside it
            (smaller than a stride) still gets none.
        center_margin: pixels the anchor centre must lie inside the GT (``base.center_margin``:
            0.01, or 0.51 for the releases' "+1" geometry, ``MODEL.LEGACY_PLUS_ONE``).
    """

    def __init__(self, topk: int = 9, anchors_per_location: int = 1,
                 keep_best_candidate: bool = False, center_margin: float = CENTER_MARGIN):
        _check_topk(type(self).__name__, topk, anchors_per_location)
        self.center_margin = float(center_margin)
        self.topk = int(topk)
        self.anchors_per_location = int(anchors_per_location)
        self.keep_best_candidate = bool(keep_best_candidate)

    tuning_keys = ("MODEL.ATSS.TOPK", "MODEL.ATSS.ANCHOR_SIZES", "MODEL.ATSS.ANCHOR_STRIDES",
                   "MODEL.ATSS.KEEP_BEST_CANDIDATE", "INPUT.MIN_SIZE_TRAIN")

    def candidate_scores(self, cand_idx: Tensor, cand_anchors: Tensor, gt_boxes: Tensor,
                         predictions: Optional[Predictions]) -> Tuple[Tensor, Tensor, Tensor]:
        """Per candidate (image, GT, k): ``(score [B, G, K], threshold [B, G], quality [B, G, K])``
        from ``cand_idx`` [B, G, K], ``cand_anchors`` [B, G, K, 4], ``gt_boxes`` [B, G, 4]."""
        raise NotImplementedError

    def _assign(self, anchors_per_level: List[Tensor], anchors: Tensor, gt: GTBatch,
                predictions: Optional[Predictions]):
        b, g = gt.valid.shape
        n = anchors.shape[0]
        cand_idx = select_candidates(anchors_per_level, box_centers(gt.boxes.reshape(-1, 4)),
                                     self.topk * self.anchors_per_location).view(b, g, -1)
        cand_anchors = anchors[cand_idx]                                         # [B, G, K, 4]
        score, threshold, quality_gk = self.candidate_scores(cand_idx, cand_anchors, gt.boxes,
                                                             predictions)
        inside = centers_inside(box_centers(cand_anchors.reshape(-1, 4)).view(*cand_idx.shape, 2),
                                gt.boxes, self.center_margin) & gt.valid[..., None]
        is_pos = (score >= threshold[..., None]) & inside
        if self.keep_best_candidate:
            is_pos = add_best_candidate(is_pos, score, inside)
        gt_inds, won = resolve_conflicts(cand_idx, is_pos, score, n)
        return gt_inds, scatter_pairs(quality_gk, cand_idx, won, n), None


class ATSSAssigner(CandidateThresholdAssigner):
    """Adaptive training sample selection: the score is ``IoU(anchor, GT)``, the threshold its
    mean + unbiased std over the GT's candidates; ``quality`` is the IoU.

    ``keep_best_candidate``: config ``MODEL.ATSS.KEEP_BEST_CANDIDATE`` (default False = the
    original). Never builds an ``[N, G]`` matrix (see :func:`select_candidates`).
    """

    @classmethod
    def from_config(cls, cfg, node: str = "ATSS") -> "ATSSAssigner":
        """Builds from ``cfg.MODEL.<node>`` (default ``MODEL.ATSS``: TOPK, KEEP_BEST_CANDIDATE,
        anchors per location) and ``MODEL.LEGACY_PLUS_ONE`` (the centre margin)."""
        from maskrcnn_benchmark.utils.legacy_plus_one import legacy_plus_one_from_config

        a = cfg.MODEL[node]
        return cls(topk=a.TOPK, anchors_per_location=len(a.ASPECT_RATIOS) * a.SCALES_PER_OCTAVE,
                   keep_best_candidate=a.KEEP_BEST_CANDIDATE,
                   center_margin=center_margin(legacy_plus_one_from_config(cfg)))

    def __repr__(self) -> str:
        return (f"ATSSAssigner(topk={self.topk}, anchors_per_location={self.anchors_per_location}, "
                f"keep_best_candidate={self.keep_best_candidate}, center_margin={self.center_margin})")

    def candidate_scores(self, cand_idx, cand_anchors, gt_boxes, predictions):
        ious = elementwise_iou(cand_anchors, gt_boxes[..., None, :])             # [B, G, K]
        threshold = ious.mean(dim=-1) + unbiased_std(ious, dim=-1)               # [B, G]
        return ious, threshold, ious


class TopKAssigner(BaseAssigner):
    """The original release's ``POSITIVE_TYPE: TOPK``: per GT, the ``topk`` anchors (over all
    levels) of highest ``IoU - d / max(d) / 1000`` (d: centre distance, max over all anchor/GT
    pairs, a tie-break towards nearer anchors), kept if the anchor centre is inside the GT;
    several GTs: highest IoU. ``k = min(topk, N)`` (not multiplied by the anchors per location,
    as the original). ``quality``: the IoU. Uses the dense ``[G, N]`` compiled ``box_iou``.
    """

    def __init__(self, topk: int = 9, center_margin: float = CENTER_MARGIN):
        _check_topk("TopKAssigner", topk, 1)
        self.topk = int(topk)
        self.center_margin = float(center_margin)

    def __repr__(self) -> str:
        return f"TopKAssigner(topk={self.topk})"

    tuning_keys = ("MODEL.ATSS.TOPK", "MODEL.ATSS.ANCHOR_SIZES", "INPUT.MIN_SIZE_TRAIN")

    def _assign(self, anchors_per_level, anchors, gt: GTBatch, predictions):
        b, g = gt.valid.shape
        n = anchors.shape[0]
        ious = box_iou(gt.boxes.reshape(-1, 4), anchors).view(b, g, n)     # [B, G, N]
        gc, ac = box_centers(gt.boxes.reshape(-1, 4)).view(b, g, 2), box_centers(anchors)
        dist = (gc[..., None, 0] - ac[:, 0]).square_()                          # [B, G, N]
        dist += (gc[..., None, 1] - ac[:, 1]).square_()
        dist.sqrt_()
        # the largest distance over the image's real anchor/GT pairs
        dist_max = torch.where(gt.valid[..., None], dist, 0).amax(dim=(1, 2), keepdim=True)
        score = ious - dist / dist_max.clamp(min=1e-12) / 1000
        del dist
        k = min(self.topk, n)
        cand_idx = score.topk(k, dim=2).indices                                  # [B, G, k]
        del score
        inside = centers_inside(ac[cand_idx], gt.boxes, self.center_margin) & gt.valid[..., None]
        cand_ious = ious.gather(2, cand_idx)
        gt_inds, won = resolve_conflicts(cand_idx, inside, cand_ious, n)
        return gt_inds, scatter_pairs(cand_ious, cand_idx, won, n), None


def add_best_candidate(is_pos: Tensor, score: Tensor, inside: Tensor) -> Tensor:
    """Makes each GT's best in-box candidate positive when the GT has no positive.

    Args:
        is_pos, inside: Tensor[..., G, K] bool; score: Tensor[..., G, K].

    Returns:
        Tensor[..., G, K] bool.
    """
    needs = ~is_pos.any(dim=-1) & inside.any(dim=-1)                             # [..., G]
    best_k = torch.where(inside, score, float("-inf")).argmax(dim=-1)            # [..., G]
    best = torch.arange(score.shape[-1], device=score.device) == best_k[..., None]
    return is_pos | (best & needs[..., None])


def build_positive_type_assigner(
    positive_type: str = "ATSS", topk: int = 9, anchors_per_location: int = 1,
    keep_best_candidate: bool = False, fg_iou_threshold: float = 0.5,
    bg_iou_threshold: float = 0.4,
    ssc_scale_ranges: Sequence[Tuple[float, float]] = DEFAULT_SSC_SCALE_RANGES,
    center_margin: float = CENTER_MARGIN,
) -> BaseAssigner:
    """The assigner of an ATSS-release ``POSITIVE_TYPE``:

    - ``"ATSS"``: :class:`ATSSAssigner` (``topk``, ``anchors_per_location``, ``keep_best_candidate``);
    - ``"SSC"``: :class:`SSCAssigner` (FCOS scale ranges ``ssc_scale_ranges``, centre margin 0.01,
      quality = anchor IoU);
    - ``"TOPK"``: :class:`TopKAssigner` (``topk``);
    - ``"IoU"``: :class:`MaxIoUAssigner` (``fg_iou_threshold`` / ``bg_iou_threshold``, low-quality
      matches, positives whose centre is outside their GT ignored).
    """
    if positive_type not in POSITIVE_TYPES:
        raise ValueError(f"ATSS positive_type (MODEL.ATSS.POSITIVE_TYPE) must be one of "
                         f"{POSITIVE_TYPES}, got {positive_type!r}")
    _check_topk(f"{positive_type} assigner", topk, anchors_per_location)
    if positive_type == "ATSS":
        return ATSSAssigner(topk, anchors_per_location, keep_best_candidate, center_margin)
    if positive_type == "SSC":
        return SSCAssigner(ssc_scale_ranges, inside_margin=center_margin)
    if positive_type == "TOPK":
        return TopKAssigner(topk, center_margin)
    return MaxIoUAssigner(fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches=True,
                          require_center_inside=True, center_margin=center_margin)


def positive_type_assigner_from_config(cfg, node: str = "ATSS") -> BaseAssigner:
    """:func:`build_positive_type_assigner` from ``cfg.MODEL.<node>`` (default ``MODEL.ATSS``:
    POSITIVE_TYPE, TOPK, KEEP_BEST_CANDIDATE, FG_IOU_THRESHOLD, BG_IOU_THRESHOLD, anchors per
    location) and ``MODEL.LEGACY_PLUS_ONE`` (the centre margin)."""
    from maskrcnn_benchmark.utils.legacy_plus_one import legacy_plus_one_from_config

    a = cfg.MODEL[node]
    return build_positive_type_assigner(
        a.POSITIVE_TYPE, topk=a.TOPK,
        anchors_per_location=len(a.ASPECT_RATIOS) * a.SCALES_PER_OCTAVE,
        keep_best_candidate=a.KEEP_BEST_CANDIDATE, fg_iou_threshold=a.FG_IOU_THRESHOLD,
        bg_iou_threshold=a.BG_IOU_THRESHOLD,
        center_margin=center_margin(legacy_plus_one_from_config(cfg)))
