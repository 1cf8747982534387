"""Winograd F(4x4, 3x3) convolution for the CPU: the 3x3 / stride 1 / padding 1 convolutions of
the towers, the FPN outputs and the ResNet blocks with 2.25x fewer multiplications
(``MODEL.WINOGRAD``).

A 3x3 convolution's output, in tiles of 4 x 4, is ``Y = AT [(G w G^T) * (BT d BT^T)] AT^T`` per
input tile d (6 x 6, overlapping by 2) and filter w (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016): the sum over input channels becomes 36 independent
matrix products ``M[i] = V[i] @ U[i]`` ([T, C] @ [C, K], T tiles) that run as one batched GEMM
(``torch.bmm``) at the machine's GEMM speed: 36 multiplications per 16 outputs and channel pair
instead of 16 * 9, a quarter. On top come the transforms, memory-bound passes over the input
(written 2.25x its size) and the output (csrc/cpu/winograd_kernel.cpp), and the weight transform,
one small GEMM ``[36, 9] @ [9, C * K]``.

The backward is exact for this factorisation (not a re-derivation by autograd of every op):
``grad_x`` is the same Winograd convolution of ``grad_y`` with the flipped, transposed filter;
``grad_w`` is ``G^T (sum over tiles V^T grad_M) G`` with ``grad_M = AT^T grad_Y AT`` per output
tile (the adjoint of the output transform); ``grad_b`` the sum of ``grad_y``. The input transform is
recomputed in the backward rather than saved (it is 2.25x the input's size).

Accuracy: the transforms' constants (up to 8 in AT, 5 in BT, 1/24 in G) amplify float32 rounding:
outputs and gradients agree with a float64 convolution to about 1e-5 of their largest magnitude
(a direct float32 convolution: about 3e-7); tested in tests/layers/test_winograd.py. This is the
algorithm oneDNN, cuDNN and NNPACK offer for float32 convolutions; it is still not bit-equal to the
default, so it is a key (default "auto": on for eager CPU float32 models, utils/cpu_speedups.py;
False for bit-identical results) and BENCHMARKS.md section 9 records what it changes.

Scope: :func:`winograd_applicable` -- a CPU float32 tensor outside autocast, tracing, scripting
and ``torch.compile``, with at least :data:`MIN_TILES` output tiles (smaller maps, e.g. P6 / P7,
pay more for the weight transform than they save) and :data:`MIN_CHANNELS` channels in and out
(64-channel convs and the box / centerness predictors stay direct). Elsewhere
:class:`WinogradConv2d` is an ordinary ``nn.Conv2d`` (on a GPU cuDNN chooses its own algorithm).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._ops import load_ops

__all__ = ["MIN_CHANNELS", "MIN_TILES", "WinogradConv2d", "convert_to_winograd", "is_plain_conv2d",
           "winograd_applicable", "winograd_conv2d", "winograd_eligible"]

TILE = 4  # output tile m; input tile a = m + 2 = 6
# F(4x4, 3x3) with the interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray, 2016)
_BT = ((4, 0, -5, 0, 1, 0),
       (0, -4, -4, 1, 1, 0),
       (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0),
       (0, 2, -1, -2, 1, 0),
       (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0),
      (-1 / 6, -1 / 6, -1 / 6),
      (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6),
      (1 / 24, -1 / 12, 1 / 6),
      (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0),
       (0, 1, -1, 2, -2, 0),
       (0, 1, 1, 4, 4, 0),
       (0, 1, -1, 8, -8, 1))
# Where the Winograd path is used (BENCHMARKS.md section 9 has the per-shape timings): at least
# MIN_TILES output tiles (N * ceil(H / 4) * ceil(W / 4); 256 channels: 24 tiles slower, 48 faster
# channels-last and even in NCHW) and at least MIN_CHANNELS input and output channels (the
# transforms cost per channel what the GEMM saves per channel pair: 64 -> 64 breaks even, 256 -> 36
# too, 256 -> 4 (a box predictor) is 2.6x slower, 96 -> 96 and 256 -> 80 are 1.45-1.5x faster).
MIN_TILES = 48
MIN_CHANNELS = 80


def transform_matrices(dtype: torch.dtype = torch.float32):
    """``(BT [6, 6], G [6, 3], AT [4, 6])`` of F(4x4, 3x3) in ``dtype``."""
    return (torch.tensor(_BT, dtype=dtype), torch.tensor(_G, dtype=dtype), torch.tensor(_AT, dtype=dtype))


_BT32, _, _AT32 = transform_matrices()
_KG = torch.kron(torch.tensor(_G, dtype=torch.float64), torch.tensor(_G, dtype=torch.float64)).float()  # [36, 9]


def _weight_taps(weight: torch.Tensor) -> torch.Tensor:
    """[K, C, 3, 3] -> [9, C, K] (tap-major: one [C, K] matrix per filter tap)."""
    return weight.permute(2, 3, 1, 0).reshape(9, weight.shape[1], weight.shape[0])


def _transform_taps(taps: torch.Tensor) -> torch.Tensor:
    """[9, C, K] -> U [36, C, K] = (G w G^T) per (c, k), as one GEMM with kron(G, G)."""
    return (_KG @ taps.reshape(9, -1)).view(36, taps.shape[1], taps.shape[2])


def _conv(x: torch.Tensor, U: torch.Tensor, bias: Optional[torch.Tensor],
          memory_format: torch.memory_format) -> torch.Tensor:
    """x [N, C, H, W], U [36, C, K] -> y [N, K, H, W] in ``memory_format``."""
    ops = load_ops()
    n, _, h, w = x.shape
    V = ops.winograd_input_transform(x, _BT32)
    y = ops.winograd_output_transform(torch.bmm(V, U), _AT32, bias, n, h, w)  # channels-last
    return y.contiguous(memory_format=memory_format)


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class _WinogradConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        y = _conv(x, _transform_taps(_weight_taps(weight)), bias, _memory_format(x))
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        ops = load_ops()
        g = grad_y.contiguous(memory_format=torch.channels_last)  # what the transforms read
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # dL/dx = conv(grad_y, w flipped in space, in / out channels swapped), padding 1
            flipped = _transform_taps(_weight_taps(weight).flip(0)).transpose(1, 2)  # [36, K, C]
            grad_x = _conv(g, flipped, None, _memory_format(x))
        if ctx.needs_input_grad[1]:
            V = ops.winograd_input_transform(x, _BT32)                         # [36, T, C]
            grad_M = ops.winograd_output_transform_backward(g, _AT32)         # [36, T, K]
            grad_U = torch.bmm(V.transpose(1, 2), grad_M)                     # [36, C, K]
            c, k = grad_U.shape[1:]
            grad_taps = (_KG.t() @ grad_U.reshape(36, -1)).view(3, 3, c, k)
            grad_w = grad_taps.permute(3, 2, 0, 1).contiguous(memory_format=_memory_format(weight))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


def is_plain_conv2d(conv: nn.Module) -> bool:
    """An ``nn.Conv2d`` or the :class:`WinogradConv2d` it was converted to (not a subclass with
    another forward, e.g. a deformable conv)."""
    return type(conv) in (nn.Conv2d, WinogradConv2d)


def _is_3x3_filter(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """x [N, C, H, W] and weight [K, C, 3, 3] with the same C."""
    return x.dim() == 4 and weight.dim() == 4 and tuple(weight.shape[2:]) == (3, 3) and x.shape[1] == weight.shape[1]


def winograd_eligible(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain 3x3 / stride 1 / padding 1 / dilation 1 / ungrouped
    ``nn.Conv2d`` with zero padding (what :func:`convert_to_winograd` converts)."""
    return (is_plain_conv2d(conv) and tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
            and tuple(conv.padding) == (1, 1) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def winograd_applicable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`winograd_conv2d` runs (and is faster) for this input: CPU float32 ``x`` and
    ``weight`` [K, C, 3, 3], outside autocast / tracing / scripting / ``torch.compile``, with at
    least :data:`MIN_TILES` output tiles of 4 x 4 and ``min(C, K) >=`` :data:`MIN_CHANNELS`."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if not _is_3x3_filter(x, weight):
        return False
    if torch.is_autocast_enabled("cpu") or torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    if torch.compiler.is_compiling():
        return False
    n, _, h, w = x.shape
    return (min(weight.shape[0], weight.shape[1]) >= MIN_CHANNELS
            and n * -(-h // TILE) * -(-w // TILE) >= MIN_TILES)


def winograd_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=1)`` by Winograd F(4x4, 3x3) on the CPU.

    Shapes: x [N, C, H, W] (contiguous or channels-last; the output has its memory format), weight
    [K, C, 3, 3], bias [K] or None -> [N, K, H, W]. Differentiable in all three. float32 CPU
    tensors only (:func:`winograd_applicable` tells where it is used).
    """
    if not _is_3x3_filter(x, weight):
        raise ValueError(f"winograd_conv2d: needs x [N, C, H, W] and weight [K, C, 3, 3] with the same C, got "
                         f"x {list(x.shape)} and weight {list(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"winograd_conv2d: bias must have shape [{weight.shape[0]}], got {list(bias.shape)}")
    return _WinogradConv3x3.apply(x, weight, bias)


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (3x3, stride 1, padding 1) that runs :func:`winograd_conv2d` where
    :func:`winograd_applicable` holds and ``F.conv2d`` elsewhere. Same parameters and state dict
    as the ``nn.Conv2d`` it was converted from (:func:`convert_to_winograd`)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        if winograd_applicable(input, weight):
            return winograd_conv2d(input, weight, bias)
        return super()._conv_forward(input, weight, bias)


def convert_to_winograd(module: nn.Module) -> int:
    """MODEL.WINOGRAD: turn every :func:`winograd_eligible` ``nn.Conv2d`` of ``module`` into a
    :class:`WinogradConv2d`, in place (the class changes; parameters, names and checkpoints do
    not). Returns how many were converted."""
    num = 0
    for m in module.modules():
        if type(m) is nn.Conv2d and winograd_eligible(m):
            m.__class__ = WinogradConv2d
            num += 1
    return num
