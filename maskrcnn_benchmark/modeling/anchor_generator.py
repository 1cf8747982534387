"""Anchors of the dense heads (one set of cell anchors per FPN level, shifted over the grid).

Convention (continuous coordinates, no "+1", pixel ``i`` covers ``[i, i + 1)``): the anchors of
feature cell ``(y, x)`` on a level of stride ``s`` are centred at ``((x + offset) * s, (y + offset) * s)``
with ``offset`` = ``MODEL.ANCHOR_GENERATOR.OFFSET`` (default 0.5: the cell centre ``x * s + s / 2``;
mmdetection's ``AnchorGenerator(center_offset=0.0)`` puts them at ``x * s``: offset 0.0).

Relation to the original ATSS / Dynamic ATSS releases (``legacy_plus_one``, the switch
``MODEL.LEGACY_PLUS_ONE``; every convention of that switch is listed in
:mod:`maskrcnn_benchmark.utils.legacy_plus_one`). Their boxes live in a "+1" frame: a box
``[x1, x2]`` holds the pixel indices ``x1 .. x2``, width ``x2 - x1 + 1``, continuous extent
``[x1, x2 + 1)``. Their ``generate_anchors(stride s, sizes, ratios)`` starts from the window
``[1, 1, s, s] - 0.5 = [0.5, 0.5, s - 0.5, s - 0.5]`` (both releases; stock maskrcnn-benchmark uses
``- 1``): width ``w = s``, centre value ``s / 2``. Per ratio ``r`` (``h / w``) it takes
``ws = round(sqrt(s * s / r))``, ``hs = round(ws * r)`` (numpy's round half to even), per size ``S``
the scale ``S / s``, so ``W = ws * S / s``, ``H = hs * S / s``, and the cell anchor is
``[s/2 - (W-1)/2, s/2 - (H-1)/2, s/2 + (W-1)/2, s/2 + (H-1)/2]`` (float64, then float32; these are
the ``rpn.anchor_generator.cell_anchors.<level>`` buffers of its checkpoints), shifted by
``(x * s, y * s)``. For the square ATSS anchor (``r = 1``, ``S = 8 s``): ``[s/2 - S/2 + 0.5,
s/2 + S/2 - 0.5]``, continuous ``[x s + s/2 - S/2 + 0.5, x s + s/2 + S/2 + 0.5)``: width ``S``,
centre ``x s + s/2 + 0.5`` -- 0.5 px right of / below this project's anchor (offset 0.5), a
different fraction of each level's stride, so no ``OFFSET`` expresses it. With
``legacy_plus_one`` the generator holds exactly those cell anchors (as buffers named
``cell_anchors.<level>``, so an original checkpoint's buffers load into them and the checkpoint
supplies the anchors) and returns them in continuous coordinates: ``cell + [0, 0, 1, 1]`` shifted by
``(x * s, y * s)``. The ATSS ``BoxCoder`` (``TO_REMOVE = 1``) needs no switch: its widths
``x2 - x1 + 1`` and centres ``x1 + w / 2`` are the continuous ones, and its decoded ``x2`` is the
inclusive ``cx + w / 2 - 1``, i.e. the continuous ``cx + w / 2`` of
:class:`~maskrcnn_benchmark.modeling.box_coder.BoxCoder`.

An anchor of size ``S``, octave scale ``k`` and aspect ratio ``r = h / w`` has width
``S * octave^(k / scales_per_octave) / sqrt(r)`` and height ``S * octave^(k / scales_per_octave) *
sqrt(r)`` (octave 2 by default; no rounding: for the square ATSS anchors this equals the original
exactly, the original rounds the widths of non-square ratios to whole pixels; ``legacy_plus_one``
reproduces that rounding). The anchors of one
location are ordered ratio-major, scale-minor (as the original); a level's anchors are ordered
location-major (row-major over ``(y, x)``), anchor-minor, matching ``permute_and_flatten`` of the
head outputs.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["AnchorGenerator", "cell_anchors", "legacy_cell_anchors"]


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


def legacy_cell_anchors(stride: int, sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """The original releases' ``generate_anchors(stride, sizes, aspect_ratios)`` (see the module
    docstring): cell anchors of one location in their inclusive "+1" frame, centre value ``s / 2``.

    Args:
        stride: the level's stride ``s``.
        sizes: anchor sizes of the level (one per octave scale, e.g. ``(64,)``).
        aspect_ratios: ``h / w`` ratios.
    Returns:
        Tensor[A, 4] float32 ``x1, y1, x2, y2`` (inclusive), ratio-major, size-minor; e.g. stride 8,
        size 64, ratio 1: ``[-27.5, -27.5, 35.5, 35.5]``.
    """
    s = float(stride)
    centre = s / 2.0
    rows = []
    for r in aspect_ratios:
        ws = float(np.round(np.sqrt(s * s / float(r))))
        hs = float(np.round(ws * float(r)))
        for size in sizes:
            scale = float(size) / s  # the original's np.array(sizes) / stride
            w, h = ws * scale, hs * scale
            rows.append([centre - 0.5 * (w - 1), centre - 0.5 * (h - 1),
                         centre + 0.5 * (w - 1), centre + 0.5 * (h - 1)])
    return torch.tensor(rows, dtype=torch.float64).float()


class _BufferList(nn.Module):
    """Tensors stored as buffers ``"0"``, ``"1"``, ... (the original's ``BufferList``, so its
    ``cell_anchors.<level>`` checkpoint entries load); indexable and iterable like a list."""

    def __init__(self, tensors: Sequence[torch.Tensor], persistent: bool = True):
        super().__init__()
        for i, t in enumerate(tensors):
            self.register_buffer(str(i), t, persistent=persistent)

    def __getitem__(self, i: int) -> torch.Tensor:
        return list(self._buffers.values())[i]

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.values())


class AnchorGenerator(nn.Module):
    """Per-level anchors (one set per level, shared by the images of a batch).

    Args:
        sizes: anchor size in pixels per level (e.g. ``(64, 128, 256, 512, 1024)``).
        aspect_ratios: ``h / w`` ratios, shared by all levels.
        strides: stride in pixels per level (same length as ``sizes``).
        scales_per_octave: octave scales ``octave^(k / n)``, ``k < n``, per ratio.
        octave: base of the octave scales (``MODEL.ATSS.OCTAVE`` / ``MODEL.RETINANET.OCTAVE``).
        offset: anchor centre inside its cell, in strides (``MODEL.ANCHOR_GENERATOR.OFFSET``;
            0.5: ``x * s + s / 2``, 0.0: ``x * s`` as mmdetection; unused with ``legacy_plus_one``).
        legacy_plus_one: the original releases' anchors (:func:`legacy_cell_anchors`, held as the
            buffers ``cell_anchors.<level>`` that their checkpoints load into), returned in
            continuous coordinates (``MODEL.LEGACY_PLUS_ONE``). False: :func:`cell_anchors`, no state.

    (The configs' ``STRADDLE_THRESH`` is accepted and ignored: the dense heads of the original
    never dropped anchors that straddle the border.)
    """

    def __init__(self, sizes: Sequence[float] = (64, 128, 256, 512, 1024),
                 aspect_ratios: Sequence[float] = (1.0,),
                 strides: Sequence[int] = (8, 16, 32, 64, 128),
                 scales_per_octave: int = 1, octave: float = 2.0, offset: float = 0.5,
                 legacy_plus_one: bool = False):
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
        self.legacy_plus_one = bool(legacy_plus_one)
        # buffers: they move with ``model.to(device)``, so building the anchors of a new feature size
        # copies nothing from the host. Saved in checkpoints only for the releases' geometry (their
        # ``cell_anchors.<level>`` entries; a release checkpoint's values load into them and win).
        if self.legacy_plus_one:  # the original's sizes per level: size * octave^(k / n), k < n
            octave_sizes = [[s * self.octave ** (k / self.scales_per_octave)
                             for k in range(self.scales_per_octave)] for s in self.sizes]
            self.cell_anchors = _BufferList([legacy_cell_anchors(st, sz, self.aspect_ratios)
                                             for st, sz in zip(self.strides, octave_sizes)])
        else:
            self.cell_anchors = _BufferList([cell_anchors(s, self.aspect_ratios, self.scales_per_octave, self.octave)
                                             for s in self.sizes], persistent=False)
        self._cache: Dict[Tuple, List[torch.Tensor]] = {}

    @classmethod
    def from_config(cls, cfg, node: str) -> "AnchorGenerator":
        """The anchors of ``cfg.MODEL.<node>`` (ANCHOR_SIZES, ASPECT_RATIOS, ANCHOR_STRIDES,
        SCALES_PER_OCTAVE, OCTAVE; ``MODEL.ATSS`` or ``MODEL.RETINANET``, or the node a head's
        ``ANCHOR_NODE`` names), ``MODEL.ANCHOR_GENERATOR.OFFSET`` and ``MODEL.LEGACY_PLUS_ONE``.
        The one place these keys are read."""
        from maskrcnn_benchmark.utils.legacy_plus_one import legacy_plus_one_from_config

        a = cfg.MODEL[node]
        return cls(a.ANCHOR_SIZES, a.ASPECT_RATIOS, a.ANCHOR_STRIDES, a.SCALES_PER_OCTAVE,
                   octave=a.OCTAVE, offset=cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
                   legacy_plus_one=legacy_plus_one_from_config(cfg))

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
        # the buffers' versions: anchors loaded from a checkpoint (``copy_``) invalidate the cache
        versions = tuple(b._version for b in self.cell_anchors) if self.legacy_plus_one else ()
        key = (tuple((int(h), int(w)) for h, w in grid_sizes), str(device), dtype, versions)
        if key in self._cache:
            return self._cache[key]
        if len(grid_sizes) != len(self.strides):
            raise ValueError(f"AnchorGenerator: {len(grid_sizes)} feature maps, "
                             f"{len(self.strides)} strides configured")
        out = []
        offset = 0.0 if self.legacy_plus_one else self.offset
        for (h, w), stride, base in zip(key[0], self.strides, self.cell_anchors):
            base = base.to(device=device, dtype=dtype)
            if self.legacy_plus_one:  # inclusive "+1" cell anchors -> continuous
                base = base + base.new_tensor([0.0, 0.0, 1.0, 1.0])
            xs = (torch.arange(w, device=device, dtype=dtype) + offset) * stride
            ys = (torch.arange(h, device=device, dtype=dtype) + offset) * stride
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
            out.append((shifts + base[None]).reshape(-1, 4))
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
