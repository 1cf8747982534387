"""Batch-invariant inference: each image of a padded batch sees only its own canvas.

An image alone is padded to its *canvas*: its (resized) size rounded up to the size divisibility
(:func:`canvas_size`). In a batch it is padded further, to the largest canvas. Two things then
change its features: GroupNorm takes statistics over the extra padding, and the padding holds
non-zero values (a conv bias, a FrozenBN or GroupNorm shift) that the next convolution reads at the
canvas border, where alone it would read zero padding. :class:`PaddingMask` gives, for every
stride, a mask that is 1 inside each image's canvas and 0 outside; :func:`masked_group_norm` takes
the statistics over the mask only, and :func:`masked_forward` zeroes a convolution's input outside
the mask. With both, an image's features inside its canvas are those of its batch-1 run (within
float32 rounding), whatever it is batched with.

Exact when every stride-2 layer maps ``n`` positions to ``ceil(n / 2)`` (3x3/2 pad 1, 1x1/2,
7x7/2 pad 3, max-pool 3/2 pad 1: all of ResNet / FPN / P6-P7) and the size divisibility is a
multiple of the largest stride whose output is upsampled (32 for the FPN top-down path: a nearest
2x upsampling is then exact on every canvas).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["PaddingMask", "canvas_size", "masked_group_norm", "masked_forward", "reads_neighbours"]


def canvas_size(image_hw: Sequence[int], size_divisibility: int) -> Tuple[int, int]:
    """``(h, w)`` of the tensor an image of ``image_hw`` is padded to when batched alone: each side
    rounded up to a multiple of ``size_divisibility`` (unchanged for ``size_divisibility <= 0``)."""
    h, w = (int(v) for v in image_hw)
    if size_divisibility > 0:
        h = int(math.ceil(h / size_divisibility) * size_divisibility)
        w = int(math.ceil(w / size_divisibility) * size_divisibility)
    return h, w


class PaddingMask:
    """Per-image canvases of a padded batch, as masks at any power-of-2 stride.

    Args:
        canvas_hw: Tensor[B, 2] int64, ``(h, w)`` of each image's canvas in input pixels (a graph
            input in an export, so the masks follow the images of every run).

    At stride ``s`` the canvas covers ``ceil(h / s) x ceil(w / s)`` positions: the size a chain of
    ``log2(s)`` stride-2 layers gives (see the module docstring).
    """

    def __init__(self, canvas_hw: torch.Tensor):
        if canvas_hw.ndim != 2 or canvas_hw.shape[1] != 2:
            raise ValueError(f"PaddingMask: canvas_hw must be [B, 2] (h, w), got {tuple(canvas_hw.shape)}")
        self.canvas_hw = canvas_hw
        self._cache: Dict[Tuple[int, torch.dtype], torch.Tensor] = {}

    @classmethod
    def for_batch(cls, image_sizes: Sequence[Sequence[int]], tensor_hw: Sequence[int],
                  size_divisibility: int, device=None) -> Optional["PaddingMask"]:
        """The masks of a batch of ``image_sizes`` ``(h, w)`` padded to ``tensor_hw``, or None when
        every canvas fills the tensor (batch 1, equal sizes): decided on the host-known sizes, no
        device sync, and nothing extra runs then."""
        tensor_hw = tuple(int(v) for v in tensor_hw)
        canvases = [tuple(min(c, t) for c, t in zip(canvas_size(s, size_divisibility), tensor_hw))
                    for s in image_sizes]
        if all(c == tensor_hw for c in canvases):
            return None
        return cls(torch.tensor(canvases, dtype=torch.int64, device=device))

    @classmethod
    def from_sizes(cls, image_sizes: torch.Tensor, size_divisibility: int) -> "PaddingMask":
        """The masks from a Tensor[B, 2] of image sizes ``(h, w)`` (any dtype; a graph input of an
        export): each canvas the size rounded up to ``size_divisibility``. Traceable with dynamic
        shapes (no host decision; a canvas beyond the tensor just gives an all-ones mask)."""
        sizes = image_sizes.to(torch.int64)
        if size_divisibility > 0:
            sizes = torch.div(sizes + (size_divisibility - 1), size_divisibility,
                              rounding_mode="floor") * size_divisibility
        return cls(sizes)

    def levels(self, strides: Sequence[int], features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Per level Tensor[B, 1, H_l, W_l]: the masks of ``features`` at ``strides`` (pixels)."""
        if len(strides) != len(features):
            raise ValueError(f"PaddingMask: {len(strides)} strides for {len(features)} feature levels")
        return [self.at(s, f) for s, f in zip(strides, features)]

    def at(self, stride: int, like: torch.Tensor) -> torch.Tensor:
        """Tensor[B, 1, H, W] of ``like``'s dtype (``like``: a feature [B, C, H, W] at ``stride``):
        1 inside each image's canvas, 0 outside."""
        key = (int(stride), like.dtype)
        mask = self._cache.get(key)
        if mask is None or mask.shape[-2:] != like.shape[-2:]:
            valid = torch.div(self.canvas_hw + (stride - 1), stride, rounding_mode="floor")  # [B, 2]
            rows = torch.arange(like.shape[-2], device=like.device)[None] < valid[:, :1]     # [B, H]
            cols = torch.arange(like.shape[-1], device=like.device)[None] < valid[:, 1:]     # [B, W]
            mask = (rows[:, None, :, None] & cols[:, None, None, :]).to(like.dtype)
            self._cache[key] = mask
        return mask


def masked_group_norm(x: torch.Tensor, mask: torch.Tensor, num_groups: int,
                      weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                      eps: float = 1e-5) -> torch.Tensor:
    """GroupNorm of each image over its masked positions only; zero outside the mask.

    Args:
        x: Tensor[B, C, H, W]; mask: Tensor[B, 1, H, W] of 0 / 1 (a :meth:`PaddingMask.at`).
        num_groups, weight [C], bias [C], eps: as ``F.group_norm``.
    Returns:
        Tensor[B, C, H, W] in x's dtype and memory format (a channels-last x stays channels-last):
        inside the mask, ``F.group_norm`` of the image cropped to its mask; 0 outside. Statistics
        in float32 (biased variance of the centred values, as ``F.group_norm``).

    The masked sums over H, W are one batched matrix product each (``bmm`` of the flat mask with
    x viewed as [B, HW, C] or [B, C, HW], whichever its memory format makes a view), the group sums
    a product with the [C, C] same-group matrix, and the affine a single ``addcmul``: six passes
    over x, every full-size result in x's memory format (3.4x faster than elementwise masking on a
    channels-last [8, 128, 28, 40] map on the CPU). Out-of-place ops only (the ONNX tracer drops
    in-place ones on broadcast results).
    """
    b, c, h, w = x.shape
    per_group = c // num_groups
    xf = x.float()
    m = mask.float()
    m_flat = m.reshape(b, 1, h * w)
    count = (m.sum(dim=(2, 3)) * per_group).clamp_min(1.0)                            # [B, 1]
    group = torch.arange(c, device=x.device) // per_group
    same_group = (group[:, None] == group[None, :]).float()                           # [C, C]

    def masked_group_sum(t: torch.Tensor) -> torch.Tensor:                            # [B, C, H, W] -> [B, C]
        if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
            per_channel = torch.bmm(m_flat, t.permute(0, 2, 3, 1).reshape(b, h * w, c))  # [B, 1, C]
        else:
            per_channel = torch.bmm(t.reshape(b, c, h * w), m_flat.transpose(1, 2))      # [B, C, 1]
        return per_channel.reshape(b, c) @ same_group  # each channel: the sum over its group

    mean = masked_group_sum(xf) / count                                               # [B, C]
    centred = xf - mean[:, :, None, None]
    var = masked_group_sum(centred.square()) / count                                  # [B, C]
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.float().reshape(1, c)
    if bias is None:
        y = centred * scale[:, :, None, None]
    else:
        y = torch.addcmul(bias.float().reshape(1, c, 1, 1), centred, scale[:, :, None, None])
    return (y * m).to(x.dtype)


def reads_neighbours(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution whose outputs read more than their own position (a
    kernel larger than 1 x 1: a plain, Winograd or deformable conv)."""
    kernel = getattr(module, "kernel_size", None)
    if kernel is None:
        return False
    kernel = (kernel,) if isinstance(kernel, int) else tuple(kernel)
    return any(k > 1 for k in kernel)


def masked_forward(module: nn.Module, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``module(x)`` as the images would get it alone (``mask`` None: just ``module(x)``).

    ``module``: a stride-1 layer or an ``nn.Sequential`` of them (a head tower, an FPN block);
    x: Tensor[B, C, H, W]; mask: Tensor[B, 1, H, W] (:meth:`PaddingMask.at` at x's stride).
    A GroupNorm runs as :func:`masked_group_norm`; a convolution that :func:`reads_neighbours`
    gets its input zeroed outside the mask; anything else runs as it is.
    """
    if mask is None:
        return module(x)
    if isinstance(module, nn.Sequential):
        for child in module:
            x = masked_forward(child, x, mask)
        return x
    if isinstance(module, nn.GroupNorm):
        return masked_group_norm(x, mask, module.num_groups, module.weight, module.bias, module.eps)
    if reads_neighbours(module):
        x = x * mask
    return module(x)
