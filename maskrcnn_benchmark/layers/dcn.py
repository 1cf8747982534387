"""Modulated deformable convolution (DCNv2, Zhu et al. 2019).

    y[b, o, p] = bias[o] + sum_{c, k} w[o, c, k] * x_c(p0 + p_k + dp_k) * m_k

x_c(.) is bilinear interpolation with zeros outside the image, p_k the dilated
kernel taps in row-major order, dp_k = (dy, dx) the learned offsets and m_k in
[0, 1] the modulation mask, both per deformable group of input channels.

The compiled op is ``torch.ops.maskrcnn_benchmark.deform_conv2d`` (schema in
``csrc/ops.cpp``, kernels in ``csrc/cpu/deform_conv_kernel.cpp`` and
``csrc/cuda/deform_conv_kernel.cu``); its autograd formula and fake (meta)
kernel are registered with the other ops' in :mod:`._ops`, so it works with
``torch.compile``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ._ops import load_ops

__all__ = ["deform_conv2d", "ModulatedDeformConv", "DFConv2d"]

_IntPair = Union[int, Tuple[int, int]]


def _out_size(size, pad: int, dil: int, k: int, stride: int):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _check_args(input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Optional[Tensor],
                stride, padding, dilation, groups: int, deformable_groups: int) -> None:
    for name, t in (("input", input), ("offset", offset), ("mask", mask), ("weight", weight)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            got = f"{t.dim()}-D" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"deform_conv2d: {name} must be a 4-D tensor, got {got}")
    if groups < 1 or deformable_groups < 1:
        raise ValueError(f"deform_conv2d: groups ({groups}) and deformable_groups ({deformable_groups}) must be >= 1")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"deform_conv2d: need stride >= 1, dilation >= 1, padding >= 0; got "
                         f"stride={stride}, dilation={dilation}, padding={padding}")
    batch, channels, height, width = input.shape
    out_channels, in_per_group, kh, kw = weight.shape
    if channels % groups or out_channels % groups:
        raise ValueError(f"deform_conv2d: input channels ({channels}) and weight out channels ({out_channels}) "
                         f"must be divisible by groups ({groups})")
    if in_per_group * groups != channels:
        raise ValueError(f"deform_conv2d: weight must have input channels/groups={channels // groups} in dim 1, "
                         f"got {in_per_group}")
    if channels % deformable_groups:
        raise ValueError(f"deform_conv2d: input channels ({channels}) must be divisible by "
                         f"deformable_groups ({deformable_groups})")
    out_h = _out_size(height, padding[0], dilation[0], kh, stride[0])
    out_w = _out_size(width, padding[1], dilation[1], kw, stride[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"deform_conv2d: input of size {height}x{width} is too small for a {kh}x{kw} kernel "
                         f"(output would be {out_h}x{out_w})")
    taps = deformable_groups * kh * kw
    for name, t, c in (("offset", offset, 2 * taps), ("mask", mask, taps)):
        formula = "2*deformable_groups*kh*kw" if name == "offset" else "deformable_groups*kh*kw"
        if t.shape[1] != c:
            raise ValueError(f"deform_conv2d: {name} must have {formula}={c} channels, got {t.shape[1]}")
        if t.shape[0] != batch or tuple(t.shape[2:]) != (out_h, out_w):
            raise ValueError(f"deform_conv2d: {name} must have shape [{batch}, {c}, {out_h}, {out_w}] "
                             f"(batch, channels, output size), got {list(t.shape)}")
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"deform_conv2d: bias must have shape [{out_channels}], got {list(bias.shape)}")
    if torch.is_autocast_enabled(input.device.type):
        return  # the Autocast kernel casts every tensor to float32 (csrc/autocast/autocast_kernels.cpp)
    dtypes = {t.dtype for t in (input, offset, mask, weight) + ((bias,) if bias is not None else ())}
    if len(dtypes) != 1:
        raise TypeError(f"deform_conv2d: input, offset, mask, weight and bias must share one dtype, got {dtypes}")
    supported = (torch.float32, torch.float64) + ((torch.float16, torch.bfloat16) if input.is_cuda else ())
    if input.dtype not in supported:
        raise TypeError(f"deform_conv2d: on {input.device.type} only {', '.join(map(str, supported))} are "
                        f"supported, got {input.dtype}")


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: _IntPair = 1,
    padding: _IntPair = 0,
    dilation: _IntPair = 1,
    groups: int = 1,
    deformable_groups: int = 1,
) -> Tensor:
    """Modulated deformable convolution (DCNv2).

    Args:
        input: [B, C, H, W].
        offset: [B, 2 * deformable_groups * kh * kw, Ho, Wo] in input pixels; for deformable
            group d and kernel tap k (row-major), channel d*2*kh*kw + 2k is dy and 2k + 1 is dx
            (the layout of the original DCN and of torchvision).
        mask: [B, deformable_groups * kh * kw, Ho, Wo], modulation in [0, 1] (already sigmoided).
        weight: [O, C / groups, kh, kw].
        bias: [O] or None.
        stride, padding, dilation: int or (h, w).
        groups: convolution groups; deformable_groups: groups of input channels sharing offsets/mask.

    Returns:
        [B, O, Ho, Wo] with Ho = (H + 2 * pad_h - dil_h * (kh - 1) - 1) // stride_h + 1 (same for Wo).
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    _check_args(input, offset, mask, weight, bias, stride, padding, dilation, groups, deformable_groups)
    return load_ops().deform_conv2d(
        input, weight, offset, mask, bias,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        groups, deformable_groups,
    )


class ModulatedDeformConv(nn.Module):
    """DCNv2 layer whose offsets and mask are given by the caller.

    forward(x [B, C, H, W], offset [B, 2*dg*kh*kw, Ho, Wo], mask [B, dg*kh*kw, Ho, Wo]) -> [B, O, Ho, Wo].
    Parameters: ``weight`` [O, C / groups, kh, kw] and ``bias`` [O] (or None).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntPair,
        stride: _IntPair = 1,
        padding: _IntPair = 0,
        dilation: _IntPair = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"ModulatedDeformConv: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        if in_channels % deformable_groups:
            raise ValueError(f"ModulatedDeformConv: in_channels ({in_channels}) must be divisible by "
                             f"deformable_groups ({deformable_groups})")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As the original maskrcnn-benchmark / mmcv layer: U(-1/sqrt(n), 1/sqrt(n)), zero bias.
        n = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(n)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, self.groups, self.deformable_groups)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
             f"deformable_groups={self.deformable_groups}")
        return s + ("" if self.bias is not None else ", bias=False")


class DFConv2d(nn.Module):
    """Deformable conv that predicts its own offsets and mask (maskrcnn-benchmark's DFConv2d).

    ``offset`` is a plain conv with ``deformable_groups * 3 * kh * kw`` outputs (same kernel,
    stride, dilation, padding = dilation * (k - 1) // 2); its first 2/3 channels are the
    offsets, the last 1/3 pass through a sigmoid to give the mask. ``conv`` is the
    :class:`ModulatedDeformConv`. The names match the original checkpoints
    (``...conv2.offset.weight``, ``...conv2.conv.weight``).

    The offset conv starts at zero weight and bias (zero offsets, mask 0.5), as in the DCNv2
    paper and mmcv, so at initialisation the layer is 0.5 x a plain convolution. (The
    original maskrcnn-benchmark code used a kaiming-uniform offset weight instead.)

    forward(x [B, C, H, W]) -> [B, out_channels, Ho, Wo].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntPair = 3,
        stride: _IntPair = 1,
        groups: int = 1,
        dilation: _IntPair = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        with_modulated_dcn: bool = True,
    ):
        super().__init__()
        if not with_modulated_dcn:
            raise NotImplementedError("DCNv1 is not implemented; set WITH_MODULATED_DCN True")
        kernel_size, stride, dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel_size))
        taps = kernel_size[0] * kernel_size[1]
        self.offset_split = 2 * deformable_groups * taps
        self.offset = nn.Conv2d(in_channels, 3 * deformable_groups * taps, kernel_size=kernel_size,
                                stride=stride, padding=padding, dilation=dilation)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.conv = ModulatedDeformConv(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                        dilation=dilation, groups=groups, deformable_groups=deformable_groups,
                                        bias=bias)
        self.with_modulated_dcn = with_modulated_dcn
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        offset_mask = self.offset(x)
        offset = offset_mask[:, : self.offset_split]
        mask = offset_mask[:, self.offset_split:].sigmoid()
        return self.conv(x, offset, mask)
