"""Box helpers: the one home for areas, centres, side distances, clipping and centerness of
``x1, y1, x2, y2`` boxes.

All boxes are continuous pixel coordinates with no legacy "+1": a box's width is ``x2 - x1``.
Overlaps (IoU, GIoU; pairwise and element-wise) live in :mod:`maskrcnn_benchmark.layers.box_iou`,
next to the compiled pairwise op.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_centers",
    "point_box_distances",
    "centerness",
    "clip_boxes",
    "inclusive_boxes",
]

def box_area(boxes: Tensor) -> Tensor:
    """Areas of boxes.

    Args:
        boxes: Tensor[N, 4] ``x1, y1, x2, y2``.

    Returns:
        Tensor[N]: ``(x2 - x1) * (y2 - y1)`` in square pixels (negative for inverted boxes,
        as torchvision's ``box_area``).
    """
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_centers(boxes: Tensor) -> Tensor:
    """Centres of boxes.

    Args:
        boxes: Tensor[..., 4] ``x1, y1, x2, y2``.

    Returns:
        Tensor[..., 2]: ``((x1 + x2) / 2, (y1 + y2) / 2)`` in pixels.
    """
    return torch.stack(((boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2),
                       dim=-1)


def point_box_distances(points: Tensor, boxes: Tensor, plus_one: bool = False) -> Tensor:
    """Distances from points to the sides of boxes (the one home of the ``l, t, r, b`` rule).

    Args:
        points: Tensor[..., 2] ``(x, y)``; boxes: Tensor[..., 4] ``x1, y1, x2, y2``, broadcastable
            against ``points`` (e.g. points ``[N, 1, 2]`` and boxes ``[1, G, 4]`` give ``[N, G, 4]``).
        plus_one: the original releases' distances (``MODEL.LEGACY_PLUS_ONE``): they measure from the
            point's pixel-index value (continuous ``x - 0.5``) to the inclusive sides ``x1, y1,
            x2 - 1, y2 - 1``, so each distance is the continuous one minus 0.5.

    Returns:
        Tensor[..., 4] ``(x - x1, y - y1, x2 - x, y2 - y)`` (minus 0.5 with ``plus_one``): all
        positive iff the point is strictly inside; ``amin(-1)`` is the inside margin, ``amax(-1)`` the
        FCOS scale measure.
    """
    ltrb = torch.stack((points[..., 0] - boxes[..., 0], points[..., 1] - boxes[..., 1],
                        boxes[..., 2] - points[..., 0], boxes[..., 3] - points[..., 1]), dim=-1)
    return ltrb - 0.5 if plus_one else ltrb


def inclusive_boxes(boxes: Tensor) -> Tensor:
    """Continuous boxes Tensor[..., 4] -> the original releases' inclusive "+1" boxes
    ``x1, y1, x2 - 1, y2 - 1`` (same pixels; read as continuous boxes they are 1 px smaller)."""
    return boxes - boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


def clip_boxes(boxes: Tensor, image_wh, plus_one: bool = False):
    """Clip boxes to an image and tell which are non-empty (the post-processing rule).

    Args:
        boxes: Tensor[..., 4] continuous ``x1, y1, x2, y2``.
        image_wh: ``(w, h)`` of the image: numbers, or Tensors broadcastable against
            ``boxes[..., 0]`` (e.g. ``[B, 1]`` for a batch of images of different sizes).
        plus_one: the original releases' rule (``MODEL.LEGACY_PLUS_ONE``): ``clip_to_image`` clamps
            the inclusive corners to ``[0, w - 1]`` / ``[0, h - 1]``, i.e. here ``x1`` to ``[0, w - 1]``
            and ``x2`` to ``[1, w]`` (the inclusive ``x2 - 1`` to ``[0, w - 1]``), and
            ``remove_small_boxes(min_size=0)`` keeps inclusive widths ``x2 - x1 + 1 >= 0``, i.e.
            ``x2 >= x1`` here (a box outside the image survives as a 1 px sliver at its border).

    Returns:
        (Tensor[..., 4] clipped boxes, Tensor[...] bool non-empty): continuous ``[0, w] x [0, h]``
        and ``x2 > x1, y2 > y1``, or the ``plus_one`` rule above. Number sizes are made on the
        boxes' device by fills (no host-to-device copy).
    """
    w, h = (v if torch.is_tensor(v) else boxes.new_full((), float(v)) for v in image_wh)
    x1, y1, x2, y2 = boxes.unbind(-1)
    if plus_one:
        clipped = torch.stack([torch.minimum(x1.clamp(min=0), w - 1), torch.minimum(y1.clamp(min=0), h - 1),
                               torch.minimum(x2.clamp(min=1), w), torch.minimum(y2.clamp(min=1), h)], dim=-1)
        return clipped, (clipped[..., 2] >= clipped[..., 0]) & (clipped[..., 3] >= clipped[..., 1])
    clipped = torch.stack([torch.minimum(x1.clamp(min=0), w), torch.minimum(y1.clamp(min=0), h),
                           torch.minimum(x2.clamp(min=0), w), torch.minimum(y2.clamp(min=0), h)], dim=-1)
    return clipped, (clipped[..., 2] > clipped[..., 0]) & (clipped[..., 3] > clipped[..., 1])


def centerness(ltrb: Tensor) -> Tensor:
    """FCOS centerness from side distances.

    Args:
        ltrb: Tensor[..., 4] ``(l, t, r, b)`` (see :func:`point_box_distances`).

    Returns:
        Tensor[...] ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` in [0, 1]; distances are
        clamped at 0 and denominators at 1e-12, so a point on or outside a side gives 0, never NaN.
    """
    d = ltrb.clamp(min=0)
    lr = torch.minimum(d[..., 0], d[..., 2]) / torch.maximum(d[..., 0], d[..., 2]).clamp(min=1e-12)
    tb = torch.minimum(d[..., 1], d[..., 3]) / torch.maximum(d[..., 1], d[..., 3]).clamp(min=1e-12)
    return torch.sqrt(lr * tb)
