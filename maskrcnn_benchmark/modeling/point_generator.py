"""Points of the anchor-free heads (FCOS, AutoAssign): one location per feature cell.

The location of cell ``(y, x)`` on a level of stride ``s`` is ``((x + offset) * s, (y + offset) * s)``
in continuous pixel coordinates: ``offset = 0.5`` is the cell centre (FCOS's ``x * s + s // 2``
for the even strides of an FPN), ``offset = 0`` the cell corner (AutoAssign, which "removes the
half-stride offset" of FCOS). Points are ordered row-major over ``(y, x)`` per level, matching
``permute_and_flatten`` of the head outputs with one "anchor" per location.

Relation to the original FCOS / ATSS ``POINT`` code ("+1" frame, see modeling/anchor_generator.py):
its locations ``x * s + s // 2`` are the values used here (``offset = 0.5``), but its boxes
``[x - l, x + r]`` are inclusive, i.e. continuous ``[x - l, x + r + 1)``, and its training targets
were measured the same way. So an original FCOS / ``POINT`` checkpoint decoded here gives boxes whose
right / bottom edges are 1 px left of / above the original's (in the network's input frame; on top
of that comes the rescaling difference that ``MODEL.LEGACY_PLUS_ONE`` reproduces). No key
reproduces that 1 px yet: it is not an offset of the points.

The dense head hands points to the assigners (which take ``[N_l, 4]`` boxes and read their
centres) as zero-size boxes ``(x, y, x, y)`` (:meth:`PointGenerator.as_boxes`); boxes are decoded
from distances by :func:`distances_to_boxes`.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from maskrcnn_benchmark.structures.box_ops import point_box_distances

__all__ = ["PointGenerator", "points_as_boxes", "distances_to_boxes", "boxes_to_distances"]


def points_as_boxes(points: torch.Tensor) -> torch.Tensor:
    """Tensor[N, 2] ``(x, y)`` -> Tensor[N, 4] zero-size boxes ``(x, y, x, y)`` (centre = point)."""
    return torch.cat([points, points], dim=-1)


def distances_to_boxes(distances: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Boxes from side distances.

    Args:
        distances: Tensor[..., 4] ``(l, t, r, b)`` in pixels.
        points: Tensor[..., 2] ``(x, y)``, or Tensor[..., 4] zero-size boxes (their first two
            columns are used), broadcastable to ``distances``.
    Returns:
        Tensor[..., 4] xyxy ``(x - l, y - t, x + r, y + b)``, in the dtype of ``distances``.
    """
    points = points.to(distances.dtype)
    x, y = points[..., 0], points[..., 1]
    return torch.stack([x - distances[..., 0], y - distances[..., 1],
                        x + distances[..., 2], y + distances[..., 3]], dim=-1)


def boxes_to_distances(boxes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`distances_to_boxes`: Tensor[..., 4] boxes, Tensor[..., 2 or 4] points ->
    Tensor[..., 4] ``(l, t, r, b)`` (negative for a point outside the box)."""
    return point_box_distances(points.to(boxes.dtype), boxes)


class PointGenerator(nn.Module):
    """Per-level locations for a batch of images.

    Args:
        strides: stride in pixels per level.
        offset: location of a cell inside it, in strides (0.5: centre, 0: top-left corner).
    """

    def __init__(self, strides: Sequence[int] = (8, 16, 32, 64, 128), offset: float = 0.5):
        super().__init__()
        self.strides = tuple(int(s) for s in strides)
        self.offset = float(offset)
        self._cache: Dict[Tuple, List[torch.Tensor]] = {}

    def grid_points(self, grid_sizes: Sequence[Tuple[int, int]], device=None,
                    dtype=torch.float32) -> List[torch.Tensor]:
        """Locations of every level for feature maps of sizes ``[(H_l, W_l)]``.

        Returns:
            list over levels of Tensor[H_l * W_l, 2] ``(x, y)`` pixels (cached).
        """
        key = (tuple((int(h), int(w)) for h, w in grid_sizes), str(device), dtype)
        if key in self._cache:
            return self._cache[key]
        if len(grid_sizes) != len(self.strides):
            raise ValueError(f"PointGenerator: {len(grid_sizes)} feature maps, "
                             f"{len(self.strides)} strides configured")
        out = []
        for (h, w), stride in zip(key[0], self.strides):
            xs = (torch.arange(w, device=device, dtype=dtype) + self.offset) * stride
            ys = (torch.arange(h, device=device, dtype=dtype) + self.offset) * stride
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            out.append(torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1))
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[key] = out
        return out

    def as_boxes(self, points: torch.Tensor) -> torch.Tensor:
        """The prior boxes the assigners read: zero-size boxes Tensor[N_l, 4] at the points."""
        return points_as_boxes(points)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """List over levels of Tensor[H_l * W_l, 2] locations for per-level feature maps
        Tensor[B, C, H_l, W_l]; the same for every image."""
        return self.grid_points([tuple(f.shape[-2:]) for f in features], features[0].device)
