"""Feature pyramid network (maskrcnn-benchmark names: ``fpn_inner{k}``, ``fpn_layer{k}``,
``top_blocks.p6`` / ``top_blocks.p7``)."""
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn_benchmark.layers.padding_mask import PaddingMask, masked_forward


class LastLevelMaxPool(nn.Module):
    """P6 = max_pool(P5, kernel 1, stride 2) (the RPN-style P2-P6 pyramid)."""

    def forward(self, c5: torch.Tensor, p5: torch.Tensor, masks: Optional[PaddingMask] = None,
                stride: int = 32) -> List[torch.Tensor]:
        """(A 1 x 1 pooling reads no padding: ``masks`` / ``stride`` are not needed.)"""
        return [F.max_pool2d(p5, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2(C5 or P5), P7 = conv3x3/2(relu(P6)) (RetinaNet-style P3-P7 pyramid).

    Args:
        in_channels: channels of the P6 input (C5's, e.g. 2048, or ``out_channels`` for P5).
        out_channels: channels of P6 and P7.
        use_p5: take P6 from P5 (True, ATSS ``USE_C5: False``) or from C5 (False).
        relu_before_p6: P6 = conv3x3/2(relu(C5 or P5)).
        relu_before_p7: P7 = conv3x3/2(relu(P6)) (True: maskrcnn-benchmark; mmdetection's FPN has the
            ReLU only with ``relu_before_extra_convs``, and never before P6).

    Convs are initialised with ``kaiming_uniform_(a=1)`` and zero bias.
    Shape: c5 [N, C5, H, W], p5 [N, out_channels, H, W] -> [P6 [N, out, H/2, W/2], P7 [.., H/4, W/4]].
    """

    def __init__(self, in_channels: int, out_channels: int, use_p5: bool = False,
                 relu_before_p6: bool = False, relu_before_p7: bool = True):
        super().__init__()
        self.relu_before_p6 = relu_before_p6
        self.relu_before_p7 = relu_before_p7
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            nn.init.kaiming_uniform_(module.weight, a=1)
            nn.init.constant_(module.bias, 0)
        self.use_p5 = use_p5

    def forward(self, c5: torch.Tensor, p5: torch.Tensor, masks: Optional[PaddingMask] = None,
                stride: int = 32) -> List[torch.Tensor]:
        """``masks``: batch-invariant inference, C5 / P5 at ``stride`` pixels (see
        :mod:`~maskrcnn_benchmark.layers.padding_mask`)."""
        x = p5 if self.use_p5 else c5
        x = F.relu(x) if self.relu_before_p6 else x
        p6 = self.p6(x if masks is None else x * masks.at(stride, x))
        x = F.relu(p6) if self.relu_before_p7 else p6
        p7 = self.p7(x if masks is None else x * masks.at(2 * stride, x))
        return [p6, p7]


class FPN(nn.Module):
    """Top-down feature pyramid with lateral 1x1 convs and 3x3 output convs.

    Args:
        in_channels_list: channels of each input level, finest first; a 0 entry skips that level
            (its input is ignored). Level ``k`` (1-based) owns ``fpn_inner{k}`` and ``fpn_layer{k}``,
            so ``[0, 512, 1024, 2048]`` (C2 skipped) gives ``fpn_inner2..4`` for C3..C5.
        out_channels: channels of every output.
        conv_block: ``make_conv(in, out, kernel_size, stride=1)`` from ``conv_with_kaiming_uniform``.
        top_blocks: optional module ``(c_last, p_last) -> list of extra levels`` (P6, P7).

    Shape: x = list with one [N, C_k, H_k, W_k] per ``in_channels_list`` entry (each level half the
    size of the previous) -> list of [N, out_channels, H_k, W_k] for the used levels, then the
    top-block levels. The top-down path upsamples (nearest) to the lateral's exact size, so odd
    sizes work too.
    """

    def __init__(self, in_channels_list: Sequence[int], out_channels: int,
                 conv_block: Callable[..., nn.Module], top_blocks: Optional[nn.Module] = None):
        super().__init__()
        self.inner_blocks: List[str] = []
        self.layer_blocks: List[str] = []
        self.in_indices: List[int] = []
        for idx, in_channels in enumerate(in_channels_list, 1):
            if in_channels == 0:
                continue
            self.add_module(f"fpn_inner{idx}", conv_block(in_channels, out_channels, 1))
            self.add_module(f"fpn_layer{idx}", conv_block(out_channels, out_channels, 3, 1))
            self.inner_blocks.append(f"fpn_inner{idx}")
            self.layer_blocks.append(f"fpn_layer{idx}")
            self.in_indices.append(idx - 1)
        if not self.in_indices:
            raise ValueError("FPN needs at least one non-zero entry in in_channels_list")
        self.num_inputs = len(in_channels_list)
        self.top_blocks = top_blocks

    def forward(self, x: Sequence[torch.Tensor], masks: Optional[PaddingMask] = None,
                strides: Optional[Sequence[int]] = None) -> List[torch.Tensor]:
        """``masks``: batch-invariant inference, with ``strides`` (pixels) of the inputs ``x``
        (see :mod:`~maskrcnn_benchmark.layers.padding_mask`)."""
        if len(x) != self.num_inputs:
            raise ValueError(f"FPN expects {self.num_inputs} input levels, got {len(x)}")
        feats = [x[i] for i in self.in_indices]
        level_masks = [None] * len(feats)
        if masks is not None:
            if strides is None or len(strides) != self.num_inputs:
                raise ValueError(f"FPN: masks need the strides of the {self.num_inputs} inputs, "
                                 f"got {strides}")
            level_masks = [masks.at(strides[i], f) for i, f in zip(self.in_indices, feats)]
        last_inner = masked_forward(getattr(self, self.inner_blocks[-1]), feats[-1], level_masks[-1])
        results = [masked_forward(getattr(self, self.layer_blocks[-1]), last_inner, level_masks[-1])]
        for feature, mask, inner_block, layer_block in zip(
                feats[-2::-1], level_masks[-2::-1], self.inner_blocks[-2::-1], self.layer_blocks[-2::-1]):
            inner_lateral = masked_forward(getattr(self, inner_block), feature, mask)
            inner_top_down = F.interpolate(last_inner, size=inner_lateral.shape[-2:], mode="nearest")
            last_inner = inner_lateral + inner_top_down
            results.insert(0, masked_forward(getattr(self, layer_block), last_inner, mask))
        if self.top_blocks is not None:
            if masks is None:
                results.extend(self.top_blocks(feats[-1], results[-1]))
            else:
                results.extend(self.top_blocks(feats[-1], results[-1], masks,
                                               strides[self.in_indices[-1]]))
        return results
