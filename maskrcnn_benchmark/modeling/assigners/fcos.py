"""FCOS assignment (Tian et al., ICCV 2019): points inside a GT (or its centre region) whose
largest side distance falls in the level's scale range; the smallest GT wins. Also the ATSS
release's ``POSITIVE_TYPE: SSC`` (:class:`SSCAssigner`), the same rule on anchor centres."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from maskrcnn_benchmark.layers import elementwise_iou
from maskrcnn_benchmark.structures.box_ops import box_area, box_centers, centerness, point_box_distances

from .base import BaseAssigner, GTBatch, Predictions, gather_gt

__all__ = ["FCOSAssigner", "SSCAssigner", "scale_ranges_from_sizes"]


def scale_ranges_from_sizes(sizes_of_interest: Sequence[float]) -> Tuple[Tuple[float, float], ...]:
    """``[64, 128, 256, 512]`` -> ``((-1, 64), (64, 128), (128, 256), (256, 512), (512, inf))``."""
    bounds = [-1.0] + [float(s) for s in sizes_of_interest] + [math.inf]
    return tuple(zip(bounds[:-1], bounds[1:]))


class FCOSAssigner(BaseAssigner):
    """FCOS label assignment on points (the anchors' centres; heads pass zero-size boxes).

    A point of level ``l`` is a candidate for a GT when

    - it lies inside the GT (min(l, t, r, b) > ``inside_margin``), or, with ``center_sampling_radius`` r > 0,
      inside the GT's centre region: the box of half-size ``r * stride_l`` around the GT centre,
      clipped to the GT (as the FCOS / ATSS releases);
    - ``max(l, t, r, b)`` to the GT sides lies in ``scale_ranges[l]`` (inclusive).

    Among several candidate GTs the smallest area wins (ties: lowest GT index). ``quality`` is
    the FCOS centerness of the point in its GT (the centerness target).

    Args:
        strides: stride per level (for the centre region).
        scale_ranges: ``(lo, hi)`` per level in pixels (see :func:`scale_ranges_from_sizes`).
        center_sampling_radius: in strides; 0 disables centre sampling.
        inside_margin: pixels a point must lie inside the GT (0 for FCOS; without centre sampling).

    Subclasses may redefine :meth:`quality` (the target of a positive).
    """

    def __init__(self, strides: Sequence[int] = (8, 16, 32, 64, 128),
                 scale_ranges: Sequence[Tuple[float, float]] = scale_ranges_from_sizes((64, 128, 256, 512)),
                 center_sampling_radius: float = 0.0, inside_margin: float = 0.0):
        if len(scale_ranges) < len(strides):
            raise ValueError(f"FCOSAssigner: {len(scale_ranges)} scale ranges for {len(strides)} levels")
        self.strides = tuple(int(s) for s in strides)
        self.scale_ranges = tuple((float(lo), float(hi)) for lo, hi in scale_ranges)
        self.center_sampling_radius = float(center_sampling_radius)
        self.inside_margin = float(inside_margin)

    @classmethod
    def from_config(cls, cfg) -> "FCOSAssigner":
        """Builds from ``cfg.MODEL.FCOS`` (FPN_STRIDES, SIZES_OF_INTEREST, CENTER_SAMPLING_RADIUS)."""
        f = cfg.MODEL.FCOS
        return cls(f.FPN_STRIDES, scale_ranges_from_sizes(f.SIZES_OF_INTEREST),
                   f.CENTER_SAMPLING_RADIUS)

    def __repr__(self) -> str:
        return (f"FCOSAssigner(strides={self.strides}, scale_ranges={self.scale_ranges}, "
                f"center_sampling_radius={self.center_sampling_radius})")

    def _check_levels(self, num_levels: int) -> None:
        if num_levels != len(self.strides):
            raise ValueError(f"FCOSAssigner: {num_levels} levels, built for "
                             f"{len(self.strides)} strides")

    tuning_keys = ("MODEL.FCOS.SIZES_OF_INTEREST", "MODEL.FCOS.CENTER_SAMPLING_RADIUS",
                   "MODEL.FCOS.FPN_STRIDES", "INPUT.MIN_SIZE_TRAIN")

    def quality(self, anchors: Tensor, gt_boxes: Tensor, gt_inds: Tensor,
                point_centerness: Tensor) -> Tensor:
        """Quality target per point: Tensor[B, N] (zeroed later where ``gt_inds`` [B, N] is -1);
        FCOS: the centerness of the point in its GT (``point_centerness``). ``anchors`` [N, 4],
        ``gt_boxes`` [B, G, 4]."""
        return point_centerness

    def _assign(self, anchors_per_level: List[Tensor], anchors: Tensor, gt: GTBatch,
                predictions: Optional[Predictions]):
        self._check_levels(len(anchors_per_level))
        gt_boxes = gt.boxes
        b, g = gt.valid.shape
        areas = torch.where(gt.valid, box_area(gt_boxes.reshape(-1, 4)).view(b, g),
                            math.inf)[:, None]                                   # [B, 1, G]
        gt_ctr = box_centers(gt_boxes.reshape(-1, 4)).view(b, g, 2)              # [B, G, 2]
        gt_inds, quality = [], []
        for level, level_anchors in enumerate(anchors_per_level):
            lo, hi = self.scale_ranges[level]
            pts = box_centers(level_anchors)[None, :, None, :]                   # [1, N_l, 1, 2]
            ltrb = point_box_distances(pts, gt_boxes[:, None])                   # [B, N_l, G, 4]
            if self.center_sampling_radius > 0:
                r = self.center_sampling_radius * self.strides[level]
                region = torch.cat([torch.maximum(gt_ctr - r, gt_boxes[..., :2]),
                                    torch.minimum(gt_ctr + r, gt_boxes[..., 2:])], dim=-1)
                in_region = point_box_distances(pts, region[:, None]).amin(dim=-1) > 0
            else:
                in_region = ltrb.amin(dim=-1) > self.inside_margin               # [B, N_l, G]
            max_side = ltrb.amax(dim=-1)
            ok = in_region & (max_side >= lo) & (max_side <= hi)
            best_area, best_gt = torch.where(ok, areas, math.inf).min(dim=-1)    # [B, N_l]
            gt_inds.append(torch.where(torch.isfinite(best_area), best_gt, -1))
            best_ltrb = ltrb.gather(2, best_gt[..., None, None].expand(-1, -1, 1, 4))[:, :, 0]
            quality.append(centerness(best_ltrb))
        gt_inds = torch.cat(gt_inds, dim=1)
        return gt_inds, self.quality(anchors, gt_boxes, gt_inds, torch.cat(quality, dim=1)), None


class SSCAssigner(FCOSAssigner):
    """The ATSS release's ``POSITIVE_TYPE: SSC``: the FCOS rule on anchor centres with the
    release's margin (min(l, t, r, b) > 0.01), no centre sampling, ``max(l, t, r, b)`` within
    ``scale_ranges[level]`` (inclusive), smallest area wins (ties: lowest index); ``quality`` is
    the IoU of the anchor with its GT.

    Args:
        scale_ranges: ``(lo, hi)`` per level in pixels (at least one per level).
        inside_margin: the centre-inside margin (0.01; 0.51 for the releases' "+1" geometry).
    """

    def __init__(self, scale_ranges: Sequence[Tuple[float, float]] = (
            (-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf)),
            inside_margin: float = 0.01):
        super().__init__(strides=(1,) * len(scale_ranges), scale_ranges=scale_ranges,
                         center_sampling_radius=0.0, inside_margin=inside_margin)

    def __repr__(self) -> str:
        return f"SSCAssigner(scale_ranges={self.scale_ranges})"

    def _check_levels(self, num_levels: int) -> None:
        if len(self.scale_ranges) < num_levels:
            raise ValueError(f"SSCAssigner: {len(self.scale_ranges)} scale ranges for "
                             f"{num_levels} levels")

    tuning_keys = ("MODEL.ATSS.ANCHOR_SIZES", "MODEL.ATSS.ANCHOR_STRIDES", "INPUT.MIN_SIZE_TRAIN")

    def quality(self, anchors, gt_boxes, gt_inds, point_centerness):
        return elementwise_iou(anchors[None], gather_gt(gt_boxes, gt_inds))
