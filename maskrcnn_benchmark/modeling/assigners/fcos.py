"""FCOS assignment (Tian et al., ICCV 2019): points inside a GT (or its centre region) whose
largest side distance falls in the level's scale range; the smallest GT wins."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from maskrcnn_benchmark.structures.box_ops import box_area, box_centers

from .base import AssignResult, BaseAssigner

__all__ = ["FCOSAssigner", "scale_ranges_from_sizes", "fcos_centerness"]


def scale_ranges_from_sizes(sizes_of_interest: Sequence[float]) -> Tuple[Tuple[float, float], ...]:
    """``[64, 128, 256, 512]`` -> ``((-1, 64), (64, 128), (128, 256), (256, 512), (512, inf))``."""
    bounds = [-1.0] + [float(s) for s in sizes_of_interest] + [math.inf]
    return tuple(zip(bounds[:-1], bounds[1:]))


def fcos_centerness(ltrb: Tensor) -> Tensor:
    """Tensor[..., 4] side distances -> Tensor[...] ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``
    (distances clamped at 0, denominators at 1e-12: 0 on or outside a side, never NaN)."""
    d = ltrb.clamp(min=0)
    lr = torch.minimum(d[..., 0], d[..., 2]) / torch.maximum(d[..., 0], d[..., 2]).clamp(min=1e-12)
    tb = torch.minimum(d[..., 1], d[..., 3]) / torch.maximum(d[..., 1], d[..., 3]).clamp(min=1e-12)
    return torch.sqrt(lr * tb)


class FCOSAssigner(BaseAssigner):
    """FCOS label assignment on points (the anchors' centres; heads pass zero-size boxes).

    A point of level ``l`` is a candidate for a GT when

    - it lies inside the GT (min(l, t, r, b) > 0), or, with ``center_sampling_radius`` r > 0,
      inside the GT's centre region: the box of half-size ``r * stride_l`` around the GT centre,
      clipped to the GT (as the FCOS / ATSS releases);
    - ``max(l, t, r, b)`` to the GT sides lies in ``scale_ranges[l]`` (inclusive).

    Among several candidate GTs the smallest area wins (ties: lowest GT index). ``quality`` is
    the FCOS centerness of the point in its GT (the centerness target).

    Args:
        strides: stride per level (for the centre region).
        scale_ranges: ``(lo, hi)`` per level in pixels (see :func:`scale_ranges_from_sizes`).
        center_sampling_radius: in strides; 0 disables centre sampling.
    """

    def __init__(self, strides: Sequence[int] = (8, 16, 32, 64, 128),
                 scale_ranges: Sequence[Tuple[float, float]] = scale_ranges_from_sizes((64, 128, 256, 512)),
                 center_sampling_radius: float = 0.0):
        if len(scale_ranges) < len(strides):
            raise ValueError(f"FCOSAssigner: {len(scale_ranges)} scale ranges for {len(strides)} levels")
        self.strides = tuple(int(s) for s in strides)
        self.scale_ranges = tuple((float(lo), float(hi)) for lo, hi in scale_ranges)
        self.center_sampling_radius = float(center_sampling_radius)

    @classmethod
    def from_config(cls, cfg) -> "FCOSAssigner":
        """Builds from ``cfg.MODEL.FCOS`` (FPN_STRIDES, SIZES_OF_INTEREST, CENTER_SAMPLING_RADIUS)."""
        f = cfg.MODEL.FCOS
        return cls(f.FPN_STRIDES, scale_ranges_from_sizes(f.SIZES_OF_INTEREST),
                   f.CENTER_SAMPLING_RADIUS)

    def __repr__(self) -> str:
        return (f"FCOSAssigner(strides={self.strides}, scale_ranges={self.scale_ranges}, "
                f"center_sampling_radius={self.center_sampling_radius})")

    def _assign(self, anchors_per_level: List[Tensor], anchors: Tensor, gt_boxes: Tensor,
                gt_labels: Tensor, pred_boxes: Optional[Tensor]) -> AssignResult:
        if len(anchors_per_level) != len(self.strides):
            raise ValueError(f"FCOSAssigner: {len(anchors_per_level)} levels, built for "
                             f"{len(self.strides)} strides")
        areas = box_area(gt_boxes)[None]                                         # [1, G]
        gt_ctr = box_centers(gt_boxes)                                           # [G, 2]
        gt_inds, quality = [], []
        for level, level_anchors in enumerate(anchors_per_level):
            lo, hi = self.scale_ranges[level]
            pts = box_centers(level_anchors)[:, None, :]                         # [N_l, 1, 2]
            ltrb = torch.cat([pts - gt_boxes[None, :, :2], gt_boxes[None, :, 2:] - pts], dim=2)
            if self.center_sampling_radius > 0:
                r = self.center_sampling_radius * self.strides[level]
                region = torch.cat([torch.maximum(gt_ctr - r, gt_boxes[:, :2]),
                                    torch.minimum(gt_ctr + r, gt_boxes[:, 2:])], dim=1)
                in_region = torch.cat([pts - region[None, :, :2], region[None, :, 2:] - pts],
                                      dim=2).amin(dim=2) > 0
            else:
                in_region = ltrb.amin(dim=2) > 0                                 # [N_l, G]
            max_side = ltrb.amax(dim=2)
            ok = in_region & (max_side >= lo) & (max_side <= hi)
            best_area, best_gt = torch.where(ok, areas, math.inf).min(dim=1)
            found = torch.isfinite(best_area)
            gt_inds.append(torch.where(found, best_gt, -1))
            quality.append(fcos_centerness(ltrb[torch.arange(ltrb.shape[0], device=ltrb.device),
                                                best_gt]))
        return AssignResult.from_gt_inds(torch.cat(gt_inds), gt_labels, torch.cat(quality))
