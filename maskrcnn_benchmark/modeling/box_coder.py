"""Box <-> regression-target transforms of the dense heads.

Both coders work on continuous ``x1, y1, x2, y2`` boxes with **no "+1"**: a box's width is
``x2 - x1`` and its centre ``x1 + 0.5 * width``.

- :class:`BoxCoder` (``REGRESSION_TYPE: BOX``): the R-CNN ``(dx, dy, dw, dh)`` deltas of a box
  relative to an anchor, multiplied by ``weights``.
- :class:`PointCoder` (``REGRESSION_TYPE: POINT``): the distances ``(l, t, r, b)`` from the anchor
  centre to the box sides, in units of ``anchor_size / scale`` (= the level's stride for the
  8 x stride ATSS anchors), as the original ATSS ``POINT`` mode.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["BoxCoder", "PointCoder", "build_box_coder"]

_DEFAULT_CLIP = math.log(1000.0 / 16)


def _centers_sizes(boxes: torch.Tensor):
    """Tensor[N, 4] xyxy -> (cx, cy, w, h), each Tensor[N]."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


class BoxCoder:
    """R-CNN box deltas.

    Args:
        weights: ``(wx, wy, ww, wh)``; targets are ``wx * (gx - ax) / aw``, ``wy * (gy - ay) / ah``,
            ``ww * log(gw / aw)``, ``wh * log(gh / ah)``.
        bbox_xform_clip: upper clamp of ``dw / ww`` and ``dh / wh`` before ``exp`` at decoding
            (keeps decoded boxes finite; default ``log(1000 / 16)``).
    """

    def __init__(self, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
                 bbox_xform_clip: float = _DEFAULT_CLIP):
        if len(weights) != 4:
            raise ValueError(f"BoxCoder: weights must have 4 values, got {tuple(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def encode(self, gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Deltas that turn ``anchors`` into ``gt_boxes``.

        Args:
            gt_boxes: Tensor[N, 4] xyxy target boxes (positive width and height).
            anchors: Tensor[N, 4] xyxy anchors (positive width and height).
        Returns:
            Tensor[N, 4] of ``(dx, dy, dw, dh)``.
        """
        anchors = anchors.to(gt_boxes.dtype)
        acx, acy, aw, ah = _centers_sizes(anchors)
        gcx, gcy, gw, gh = _centers_sizes(gt_boxes)
        wx, wy, ww, wh = self.weights
        return torch.stack([wx * (gcx - acx) / aw, wy * (gcy - acy) / ah,
                            ww * torch.log(gw / aw), wh * torch.log(gh / ah)], dim=1)

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes from deltas (inverse of :meth:`encode`; ``dw``, ``dh`` clamped first).

        Args:
            deltas: Tensor[..., 4] of ``(dx, dy, dw, dh)``.
            anchors: Tensor[..., 4] xyxy anchors, broadcastable to ``deltas``.
        Returns:
            Tensor[..., 4] xyxy boxes, in the dtype of ``deltas``.
        """
        anchors = anchors.to(deltas.dtype)
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        acx = anchors[..., 0] + 0.5 * aw
        acy = anchors[..., 1] + 0.5 * ah
        wx, wy, ww, wh = self.weights
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[..., 3] / wh).clamp(max=self.bbox_xform_clip)
        cx = dx * aw + acx
        cy = dy * ah + acy
        w = torch.exp(dw) * aw
        h = torch.exp(dh) * ah
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


class PointCoder:
    """Side distances from anchor centres (FCOS-style regression on ATSS anchors).

    Args:
        scale: distances are measured in units of ``anchor_width / scale`` horizontally and
            ``anchor_height / scale`` vertically. With the ATSS anchors (size 8 x stride) and
            ``scale = 8`` the unit is the level's stride, as in the original ``POINT`` mode
            (``scale = ANCHOR_SIZES[0] / ANCHOR_STRIDES[0]``).
    """

    def __init__(self, scale: float = 8.0):
        if scale <= 0:
            raise ValueError(f"PointCoder: scale must be > 0, got {scale}")
        self.scale = float(scale)

    def encode(self, gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Tensor[N, 4] gt boxes, Tensor[N, 4] anchors -> Tensor[N, 4] of ``(l, t, r, b)``."""
        anchors = anchors.to(gt_boxes.dtype)
        acx, acy, aw, ah = _centers_sizes(anchors)
        ux, uy = aw / self.scale, ah / self.scale
        return torch.stack([(acx - gt_boxes[:, 0]) / ux, (acy - gt_boxes[:, 1]) / uy,
                            (gt_boxes[:, 2] - acx) / ux, (gt_boxes[:, 3] - acy) / uy], dim=1)

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Tensor[..., 4] ``(l, t, r, b)``, Tensor[..., 4] anchors -> Tensor[..., 4] xyxy boxes."""
        anchors = anchors.to(deltas.dtype)
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        acx = anchors[..., 0] + 0.5 * aw
        acy = anchors[..., 1] + 0.5 * ah
        ux, uy = aw / self.scale, ah / self.scale
        return torch.stack([acx - deltas[..., 0] * ux, acy - deltas[..., 1] * uy,
                            acx + deltas[..., 2] * ux, acy + deltas[..., 3] * uy], dim=-1)


def build_box_coder(regression_type: str, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
                    point_scale: float = 8.0):
    """``"BOX"`` -> :class:`BoxCoder` (``weights``); ``"POINT"`` -> :class:`PointCoder` (``point_scale``)."""
    kind = regression_type.upper()
    if kind == "BOX":
        return BoxCoder(weights)
    if kind == "POINT":
        return PointCoder(point_scale)
    raise ValueError(f"unknown REGRESSION_TYPE {regression_type!r}; expected 'BOX' or 'POINT'")
