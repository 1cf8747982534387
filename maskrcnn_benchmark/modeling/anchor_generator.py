"""Anchors of the dense heads (one set of cell anchors per FPN level, shifted over the grid).

Convention (continuous coordinates, no "+1", pixel ``i`` covers ``[i, i + 1)``): the anchors of
feature cell ``(y, x)`` on a level of stride ``s`` are centred at ``((x + offset) * s, (y + offset) * s)``
with ``offset`` = ``MODEL.ANCHOR_GENERATOR.OFFSET`` (default 0.5: the cell centre ``x * s + s / 2``;
mmdetection's ``AnchorGenerator(center_offset=0.0)`` puts them at ``x * s``: offset 0.0).

Relation to the original maskrcnn-benchmark / ATSS / Dynamic ATSS code, whose boxes live in a "+1"
frame (a box ``[x1, x2]`` holds the pixel indices ``x1 .. x2``, width ``x2 - x1 + 1``; its continuous
extent is ``[x1, x2 + 1)``), derived from its ``generate_anchors`` and the ATSS ``BoxCoder``
(``TO_REMOVE = 1``):

- ``generate_anchors`` starts from ``[0, 0, s - 1, s - 1]`` and builds a size-``S`` anchor
  ``[(s - S) / 2, (s + S) / 2 - 1]`` around the centre value ``(s - 1) / 2``, shifted by ``x * s``.
  So the anchor's centre *value* is ``x * s + s / 2 - 0.5``, but as a "+1" box it covers the
  continuous interval ``[x * s + (s - S) / 2, x * s + (s + S) / 2)``: centre ``x * s + s / 2``,
  width ``S`` -- exactly the anchor here (offset 0.5).
- The ATSS ``BoxCoder`` decodes with ``w = x2 - x1 + 1``, ``cx = (x1 + x2) / 2`` (a value in the same
  "+1" frame), and returns ``cx' -/+ (w' - 1) / 2``, whose continuous extent is ``[cx' + 0.5 - w' / 2,
  cx' + 0.5 + w' / 2)``. Substituting, the continuous decoded box is ``(dx * S + x * s + s / 2) -/+
  exp(dw) * S / 2``: the same as this project's :class:`~maskrcnn_benchmark.modeling.box_coder.BoxCoder`
  on these anchors. The original's COCO json (``xywh`` with ``w = x2 - x1 + 1``) therefore holds the
  same boxes as this project's in the network's input frame; reading its raw ``x1, y1, x2, y2``
  tensors as continuous coordinates is what makes them look 0.5 px off (centre) and 1 px narrower.
- The one real difference is the rescaling to the original image: ``BoxList.resize`` of the
  original multiplies the inclusive ``x2, y2`` by the ratio ``r`` as well, so its far edges land at
  ``(x2_cont - 1) * r + 1`` instead of ``x2_cont * r`` (``1 - r`` px further right / down; about
  +0.45 px for a COCO image upscaled to 800). Its checkpoints learned that convention (their
  training GT went through the same resize), so ``TEST.LEGACY_PLUS_ONE_RESIZE True`` reproduces the
  original's output boxes from them exactly (``tests/modeling/test_anchor_generator.py`` re-derives
  the original's anchors, decoding and resize by hand and compares).

An anchor of size ``S``, octave scale ``k`` and aspect ratio ``r = h / w`` has width
``S * octave^(k / scales_per_octave) / sqrt(r)`` and height ``S * octave^(k / scales_per_octave) *
sqrt(r)`` (octave 2 by default; no rounding: for the square ATSS anchors this equals the original
exactly, the original rounds the widths of non-square ratios to whole pixels). The anchors of one
location are ordered ratio-major, scale-minor (as the original); a level's anchors are ordered
location-major (row-major over ``(y, x)``), anchor-minor, matching ``permute_and_flatten`` of the
head outputs.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

__all__ = ["AnchorGenerator", "cell_anchors"]


def cell_anchors(size: float, aspect_ratios: Sequence[float], scales_per_octave: int = 1,
                 octave: float = 2.0) -> torch.Tensor:
    """Anchors of one location centred at (0, 0); scale ``k`` has size ``size * octave^(k / scales_per_octave)``.

    Returns:
        Tensor[A, 4] xyxy with ``A = len(aspect_ratios) * scales_per_octave``, ratio-major.
    """
    rows = []
    for r in aspect_ratios:
        for k in range(scales_per_octave):
            s = float(size) * float(octave) ** (k / scales_per_octave)
            w, h = s / math.sqrt(r), s * math.sqrt(r)
            rows.append([-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h])
    return torch.tensor(rows, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """Per-level anchors (one set per level, shared by the images of a batch).

    Args:
        sizes: anchor size in pixels per level (e.g. ``(64, 128, 256, 512, 1024)``).
        aspect_ratios: ``h / w`` ratios, shared by all levels.
        strides: stride in pixels per level (same length as ``sizes``).
        scales_per_octave: octave scales ``octave^(k / n)``, ``k < n``, per ratio.
        octave: base of the octave scales (``MODEL.ATSS.OCTAVE`` / ``MODEL.RETINANET.OCTAVE``).
        offset: anchor centre inside its cell, in strides (``MODEL.ANCHOR_GENERATOR.OFFSET``;
            0.5: ``x * s + s / 2``, 0.0: ``x * s`` as mmdetection).

    (The configs' ``STRADDLE_THRESH`` is accepted and ignored: the dense heads of the original
    never dropped anchors that straddle the border.)
    """

    def __init__(self, sizes: Sequence[float] = (64, 128, 256, 512, 1024),
                 aspect_ratios: Sequence[float] = (1.0,),
                 strides: Sequence[int] = (8, 16, 32, 64, 128),
                 scales_per_octave: int = 1, octave: float = 2.0, offset: float = 0.5):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"AnchorGenerator: {len(sizes)} sizes but {len(strides)} strides")
        self.sizes = tuple(float(s) for s in sizes)
        self.strides = tuple(int(s) for s in strides)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.scales_per_octave = int(scales_per_octave)
        self.octave = float(octave)
        self.offset = float(offset)
        if self.octave <= 0:
            raise ValueError(f"AnchorGenerator: octave must be > 0, got {octave}")
        # buffers (not saved in checkpoints): they move with ``model.to(device)``, so building the
        # anchors of a new feature size copies nothing from the host
        for i, s in enumerate(self.sizes):
            self.register_buffer(f"cell_anchors_{i}", cell_anchors(s, self.aspect_ratios,
                                                                   self.scales_per_octave,
                                                                   self.octave), persistent=False)
        self._cache: Dict[Tuple, List[torch.Tensor]] = {}

    @property
    def cell_anchors(self) -> List[torch.Tensor]:
        """Per level Tensor[A, 4], the anchors of one location centred at (0, 0)."""
        return [getattr(self, f"cell_anchors_{i}") for i in range(len(self.sizes))]

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.aspect_ratios) * self.scales_per_octave

    def grid_anchors(self, grid_sizes: Sequence[Tuple[int, int]], device=None,
                     dtype=torch.float32) -> List[torch.Tensor]:
        """Anchors of every level for feature maps of sizes ``[(H_l, W_l)]``.

        Returns:
            list over levels of Tensor[H_l * W_l * A, 4] (cached per sizes / device / dtype;
            built on ``device`` from the cell-anchor buffers, no host-to-device copy).
        """
        key = (tuple((int(h), int(w)) for h, w in grid_sizes), str(device), dtype)
        if key in self._cache:
            return self._cache[key]
        if len(grid_sizes) != len(self.strides):
            raise ValueError(f"AnchorGenerator: {len(grid_sizes)} feature maps, "
                             f"{len(self.strides)} strides configured")
        out = []
        for (h, w), stride, base in zip(key[0], self.strides, self.cell_anchors):
            xs = (torch.arange(w, device=device, dtype=dtype) + self.offset) * stride
            ys = (torch.arange(h, device=device, dtype=dtype) + self.offset) * stride
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
            out.append((shifts + base.to(device=device, dtype=dtype)[None]).reshape(-1, 4))
        if len(self._cache) > 64:  # many image sizes (evaluation without batching): bound memory
            self._cache.clear()
        self._cache[key] = out
        return out

    def as_boxes(self, anchors: torch.Tensor) -> torch.Tensor:
        """The prior boxes the assigners read: the anchors themselves (Tensor[N_l, 4])."""
        return anchors

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """List over levels of Tensor[H_l * W_l * A, 4] anchors (float32 even under autocast)
        for per-level feature maps Tensor[B, C, H_l, W_l]; the same for every image."""
        return self.grid_anchors([tuple(f.shape[-2:]) for f in features], features[0].device)
