"""Anchors of the dense heads (one set of cell anchors per FPN level, shifted over the grid).

Convention (continuous coordinates, no "+1"): the anchors of feature cell ``(y, x)`` on a level
of stride ``s`` are centred at ``(x * s + s / 2, y * s + s / 2)``. This is the original
maskrcnn-benchmark / ATSS ``generate_anchors`` centre ``x * s + (s - 1) / 2`` expressed in
continuous coordinates (pixel ``i`` covers ``[i, i + 1)``), i.e. the same anchors without "+1".

An anchor of size ``S``, octave scale ``k`` and aspect ratio ``r = h / w`` has width
``S * 2^(k / scales_per_octave) / sqrt(r)`` and height ``S * 2^(k / scales_per_octave) * sqrt(r)``
(no rounding; for the square ATSS anchors this equals the original exactly). The anchors of one
location are ordered ratio-major, scale-minor (as the original); a level's anchors are ordered
location-major (row-major over ``(y, x)``), anchor-minor, matching
``permute_and_flatten`` of the head outputs.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

__all__ = ["AnchorGenerator", "cell_anchors"]


def cell_anchors(size: float, aspect_ratios: Sequence[float], scales_per_octave: int = 1) -> torch.Tensor:
    """Anchors of one location centred at (0, 0).

    Returns:
        Tensor[A, 4] xyxy with ``A = len(aspect_ratios) * scales_per_octave``, ratio-major.
    """
    rows = []
    for r in aspect_ratios:
        for k in range(scales_per_octave):
            s = float(size) * 2.0 ** (k / scales_per_octave)
            w, h = s / math.sqrt(r), s * math.sqrt(r)
            rows.append([-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h])
    return torch.tensor(rows, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """Per-level anchors (one set per level, shared by the images of a batch).

    Args:
        sizes: anchor size in pixels per level (e.g. ``(64, 128, 256, 512, 1024)``).
        aspect_ratios: ``h / w`` ratios, shared by all levels.
        strides: stride in pixels per level (same length as ``sizes``).
        scales_per_octave: octave scales ``2^(k / n)``, ``k < n``, per ratio.

    (The configs' ``STRADDLE_THRESH`` is accepted and ignored: the dense heads of the original
    never dropped anchors that straddle the border.)
    """

    def __init__(self, sizes: Sequence[float] = (64, 128, 256, 512, 1024),
                 aspect_ratios: Sequence[float] = (1.0,),
                 strides: Sequence[int] = (8, 16, 32, 64, 128),
                 scales_per_octave: int = 1):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"AnchorGenerator: {len(sizes)} sizes but {len(strides)} strides")
        self.sizes = tuple(float(s) for s in sizes)
        self.strides = tuple(int(s) for s in strides)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.scales_per_octave = int(scales_per_octave)
        self.cell_anchors = [cell_anchors(s, self.aspect_ratios, self.scales_per_octave)
                             for s in self.sizes]
        self._cache: Dict[Tuple, List[torch.Tensor]] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.aspect_ratios) * self.scales_per_octave

    def grid_anchors(self, grid_sizes: Sequence[Tuple[int, int]], device=None,
                     dtype=torch.float32) -> List[torch.Tensor]:
        """Anchors of every level for feature maps of sizes ``[(H_l, W_l)]``.

        Returns:
            list over levels of Tensor[H_l * W_l * A, 4] (cached per sizes / device / dtype).
        """
        key = (tuple((int(h), int(w)) for h, w in grid_sizes), str(device), dtype)
        if key in self._cache:
            return self._cache[key]
        if len(grid_sizes) != len(self.strides):
            raise ValueError(f"AnchorGenerator: {len(grid_sizes)} feature maps, "
                             f"{len(self.strides)} strides configured")
        out = []
        for (h, w), stride, base in zip(key[0], self.strides, self.cell_anchors):
            xs = torch.arange(w, device=device, dtype=dtype) * stride + stride / 2.0
            ys = torch.arange(h, device=device, dtype=dtype) * stride + stride / 2.0
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
