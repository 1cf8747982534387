"""ResNet / ResNeXt bodies with maskrcnn-benchmark parameter names.

Module tree (names match the original checkpoints and torchvision's ``layerN`` naming)::

    stem.conv1, stem.bn1                      7x7/2 conv + norm + ReLU + 3x3/2 max-pool (stride 4)
    layer1 .. layer4                          res2 .. res5 (C2 .. C5, strides 4, 8, 16, 32)
      layerN.i.conv1 / bn1 / conv2 / bn2 / conv3 / bn3     bottleneck (1x1, 3x3 grouped, 1x1)
      layerN.i.conv1 / bn1 / conv2 / bn2                   basic block (3x3, 3x3; ResNet-18/34)
      layerN.0.downsample.0 (1x1 conv), .downsample.1 (norm)

A stage with deformable convolution replaces the 3x3 ``conv2`` by ``DFConv2d``, whose parameters
are ``conv2.offset.*`` and ``conv2.conv.weight``.
"""
import functools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn_benchmark.layers.batch_norm import FrozenBatchNorm2d, conv_norm
from maskrcnn_benchmark.layers.padding_mask import PaddingMask, masked_group_norm, reads_neighbours
from maskrcnn_benchmark.modeling.make_layers import group_norm

# depth -> (block type, number of blocks in res2..res5)
RESNET_DEPTHS: Dict[int, Tuple[str, Tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

NormFunc = Callable[[int], nn.Module]


def make_norm_func(norm: str = "FrozenBN", gn_dim_per_gp: int = -1, gn_num_groups: int = 32,
                   gn_eps: float = 1e-5) -> NormFunc:
    """``norm_func(num_channels) -> nn.Module`` for ``norm`` "FrozenBN" (FrozenBatchNorm2d, eps 0)
    or "GN" (GroupNorm with the given MODEL.GROUP_NORM.* values)."""
    if norm == "FrozenBN":
        return FrozenBatchNorm2d
    if norm == "GN":
        return functools.partial(group_norm, dim_per_gp=gn_dim_per_gp, num_groups=gn_num_groups,
                                 eps=gn_eps)
    raise ValueError(f"unknown norm {norm!r}; expected 'FrozenBN' or 'GN'")


def _kaiming_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  padding: int = 0, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                     dilation=dilation, groups=groups, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    return conv


def _conv3x3(in_channels: int, out_channels: int, stride: int, dilation: int, groups: int,
             with_dcn: bool, with_modulated_dcn: bool, deformable_groups: int) -> nn.Module:
    """3x3 conv ("same" padding), or a deformable one (imported lazily: it needs the DCN op)."""
    if with_dcn:
        from maskrcnn_benchmark.layers.dcn import DFConv2d

        return DFConv2d(in_channels, out_channels, kernel_size=3, stride=stride, groups=groups,
                        dilation=dilation, deformable_groups=deformable_groups, bias=False,
                        with_modulated_dcn=with_modulated_dcn)
    return _kaiming_conv(in_channels, out_channels, 3, stride=stride, padding=dilation,
                         dilation=dilation, groups=groups)


def _downsample(in_channels: int, out_channels: int, stride: int,
                norm_func: NormFunc) -> Optional[nn.Module]:
    """Projection shortcut ``Sequential(1x1 conv, norm)`` when the shape changes, else None."""
    if in_channels == out_channels and stride == 1:
        return None
    return nn.Sequential(_kaiming_conv(in_channels, out_channels, 1, stride=stride),
                         norm_func(out_channels))


def _conv_norm(conv: nn.Module, norm: nn.Module, x: torch.Tensor, masks: Optional[PaddingMask],
               stride: int) -> torch.Tensor:
    """:func:`conv_norm` of x at ``stride`` (pixels), batch-invariant with ``masks`` (None: plain
    :func:`conv_norm`): a conv that reads neighbours gets x zeroed outside each image's canvas, a
    GroupNorm takes its statistics over the canvas (:mod:`~maskrcnn_benchmark.layers.padding_mask`)."""
    if masks is None:
        return conv_norm(conv, norm, x)
    if reads_neighbours(conv):
        x = x * masks.at(stride, x)
    if isinstance(norm, nn.GroupNorm):
        y = conv(x)
        return masked_group_norm(y, masks.at(stride * conv.stride[0], y), norm.num_groups,
                                 norm.weight, norm.bias, norm.eps)
    return conv_norm(conv, norm, x)


def _shortcut(downsample: nn.Sequential, x: torch.Tensor, masks: Optional[PaddingMask] = None,
              stride: int = 1) -> torch.Tensor:
    """The projection shortcut ``Sequential(conv, norm)`` of :func:`_downsample` applied to x (at
    ``stride``), with :func:`_conv_norm` (any other Sequential, e.g. one whose norm was folded,
    runs as it is: a 1 x 1 conv reads no padding)."""
    if len(downsample) == 2:
        return _conv_norm(downsample[0], downsample[1], x, masks, stride)
    return downsample(x)


def _add_residual(out: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """``out + identity``, in place in ``out`` (a block's own temporary: one full-size allocation
    less, the same float op) unless type promotion needs a new tensor (mixed dtypes under AMP)."""
    if out.dtype == torch.promote_types(out.dtype, identity.dtype):
        return out.add_(identity)
    return out + identity


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped, optionally deformable) -> 1x1 residual block.

    ``stride_in_1x1`` puts the stride on the first 1x1 conv (MSRA caffe weights) instead of the 3x3
    (torchvision / FAIR ResNeXt weights). With ``dilation > 1`` the block keeps the resolution.

    Shape: x [N, in_channels, H, W] -> [N, out_channels, H / stride, W / stride].
    """

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int,
                 num_groups: int = 1, stride_in_1x1: bool = True, stride: int = 1, dilation: int = 1,
                 norm_func: NormFunc = FrozenBatchNorm2d, with_dcn: bool = False,
                 with_modulated_dcn: bool = False, deformable_groups: int = 1):
        super().__init__()
        if dilation > 1:
            stride = 1
        self.stride = stride
        self.downsample = _downsample(in_channels, out_channels, stride, norm_func)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _kaiming_conv(in_channels, bottleneck_channels, 1, stride=stride_1x1)
        self.bn1 = norm_func(bottleneck_channels)
        self.conv2 = _conv3x3(bottleneck_channels, bottleneck_channels, stride_3x3, dilation,
                              num_groups, with_dcn, with_modulated_dcn, deformable_groups)
        self.bn2 = norm_func(bottleneck_channels)
        self.conv3 = _kaiming_conv(bottleneck_channels, out_channels, 1)
        self.bn3 = norm_func(out_channels)

    def forward(self, x: torch.Tensor, masks: Optional[PaddingMask] = None,
                stride: int = 1) -> torch.Tensor:
        """x at ``stride`` pixels; ``masks``: batch-invariant inference (see :func:`_conv_norm`)."""
        identity = x if self.downsample is None else _shortcut(self.downsample, x, masks, stride)
        out = F.relu_(_conv_norm(self.conv1, self.bn1, x, masks, stride))
        stride *= self.conv1.stride[0]
        out = F.relu_(_conv_norm(self.conv2, self.bn2, out, masks, stride))
        out = _conv_norm(self.conv3, self.bn3, out, masks, stride * self.conv2.stride[0])
        return F.relu_(_add_residual(out, identity))


class BasicBlock(nn.Module):
    """3x3 (strided) -> 3x3 residual block of ResNet-18/34 (torchvision layout).

    ``bottleneck_channels`` and ``stride_in_1x1`` are accepted for a uniform block signature and
    ignored; ``num_groups`` must be 1. A deformable ``conv2`` is supported (stride 1).

    Shape: x [N, in_channels, H, W] -> [N, out_channels, H / stride, W / stride].
    """

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int,
                 num_groups: int = 1, stride_in_1x1: bool = True, stride: int = 1, dilation: int = 1,
                 norm_func: NormFunc = FrozenBatchNorm2d, with_dcn: bool = False,
                 with_modulated_dcn: bool = False, deformable_groups: int = 1):
        super().__init__()
        if num_groups != 1:
            raise ValueError(f"basic-block ResNets do not support grouped convs (num_groups={num_groups})")
        if dilation > 1:
            stride = 1
        self.stride = stride
        self.downsample = _downsample(in_channels, out_channels, stride, norm_func)
        self.conv1 = _kaiming_conv(in_channels, out_channels, 3, stride=stride, padding=dilation,
                                   dilation=dilation)
        self.bn1 = norm_func(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, 1, dilation, 1, with_dcn,
                              with_modulated_dcn, deformable_groups)
        self.bn2 = norm_func(out_channels)

    def forward(self, x: torch.Tensor, masks: Optional[PaddingMask] = None,
                stride: int = 1) -> torch.Tensor:
        """x at ``stride`` pixels; ``masks``: batch-invariant inference (see :func:`_conv_norm`)."""
        identity = x if self.downsample is None else _shortcut(self.downsample, x, masks, stride)
        out = F.relu_(_conv_norm(self.conv1, self.bn1, x, masks, stride))
        out = _conv_norm(self.conv2, self.bn2, out, masks, stride * self.stride)
        return F.relu_(_add_residual(out, identity))


BLOCKS = {"bottleneck": Bottleneck, "basic": BasicBlock}


class Stem(nn.Module):
    """7x7/2 conv (no bias) + norm + ReLU + 3x3/2 max-pool: x [N, 3, H, W] -> [N, C, H/4, W/4]."""

    def __init__(self, out_channels: int = 64, norm_func: NormFunc = FrozenBatchNorm2d):
        super().__init__()
        self.conv1 = _kaiming_conv(3, out_channels, 7, stride=2, padding=3)
        self.bn1 = norm_func(out_channels)

    def forward(self, x: torch.Tensor, masks: Optional[PaddingMask] = None) -> torch.Tensor:
        """``masks``: batch-invariant inference; the max-pool then reads zeros outside each
        canvas, which after the ReLU equals its own -inf padding (a window always holds a valid
        value >= 0)."""
        x = F.relu_(_conv_norm(self.conv1, self.bn1, x, masks, 1))
        if masks is not None:
            x = x * masks.at(2, x)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """ResNet / ResNeXt body returning the outputs of selected stages.

    Stage ``i`` (1..4 = ``layer1``..``layer4`` = res2..res5 = C2..C5) has
    ``num_groups * width_per_group * 2**(i-1)`` bottleneck channels and
    ``res2_out_channels * 2**(i-1)`` output channels; stages 2-4 start with stride 2.
    Only stages up to ``max(return_stages)`` are built.

    Args:
        stage_blocks: blocks per stage (res2..res5), e.g. (3, 4, 6, 3) for ResNet-50.
        block: "bottleneck" (ResNet-50+, ResNeXt) or "basic" (ResNet-18/34).
        num_groups, width_per_group: ResNeXt cardinality and group width (1, 64 for ResNet;
            32, 8 for ResNeXt-101 32x8d; 64, 4 for 64x4d).
        stride_in_1x1: stride on the first 1x1 conv (MSRA) instead of the 3x3 (torchvision/FAIR).
        stem_out_channels, res2_out_channels: 64 and 256 (bottleneck) or 64 (basic).
        norm: "FrozenBN" or "GN"; ``gn_*`` are MODEL.GROUP_NORM.* for "GN".
        freeze_at: 0 trains everything, 1 freezes the stem, 2 stem + res2, ... (requires_grad False).
        stage_with_dcn: per stage (res2..res5), use a deformable 3x3 conv (``DFConv2d``).
        with_modulated_dcn, deformable_groups: DFConv2d options.
        res5_dilation: dilation of res5 (2 keeps stride 16 for C5).
        return_stages: stage indices (1..4) whose outputs ``forward`` returns, in order.

    Attributes:
        out_channels: channels of each returned feature. strides: their strides in pixels.

    Shape: x [N, 3, H, W] -> list of [N, out_channels[k], H / strides[k], W / strides[k]]
    (sizes rounded up at every stride-2 layer).
    """

    def __init__(self, stage_blocks: Sequence[int] = (3, 4, 6, 3), block: str = "bottleneck",
                 num_groups: int = 1, width_per_group: int = 64, stride_in_1x1: bool = True,
                 stem_out_channels: int = 64, res2_out_channels: int = 256, norm: str = "FrozenBN",
                 gn_dim_per_gp: int = -1, gn_num_groups: int = 32, gn_eps: float = 1e-5,
                 freeze_at: int = 2,
                 stage_with_dcn: Sequence[bool] = (False, False, False, False),
                 with_modulated_dcn: bool = False, deformable_groups: int = 1,
                 res5_dilation: int = 1, return_stages: Sequence[int] = (1, 2, 3, 4)):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; expected one of {sorted(BLOCKS)}")
        if not return_stages or not set(return_stages) <= {1, 2, 3, 4}:
            raise ValueError(f"return_stages must be a non-empty subset of 1..4, got {return_stages}")
        num_stages = max(return_stages)
        if len(stage_blocks) < num_stages or len(stage_with_dcn) < num_stages:
            raise ValueError(f"stage_blocks {tuple(stage_blocks)} / stage_with_dcn "
                             f"{tuple(stage_with_dcn)} must cover {num_stages} stages")
        norm_func = make_norm_func(norm, gn_dim_per_gp, gn_num_groups, gn_eps)
        block_cls = BLOCKS[block]

        self.stem = Stem(stem_out_channels, norm_func)
        self.stages: List[str] = []
        stage_channels, stage_strides = [], []
        in_channels, stride = stem_out_channels, 4
        for index in range(1, num_stages + 1):
            factor = 2 ** (index - 1)
            out_channels = res2_out_channels * factor
            dilation = res5_dilation if index == 4 else 1
            first_stride = 2 if index > 1 and dilation == 1 else 1
            blocks = []
            for i in range(stage_blocks[index - 1]):
                blocks.append(block_cls(
                    in_channels, num_groups * width_per_group * factor, out_channels,
                    num_groups=num_groups, stride_in_1x1=stride_in_1x1,
                    stride=first_stride if i == 0 else 1, dilation=dilation, norm_func=norm_func,
                    with_dcn=bool(stage_with_dcn[index - 1]),
                    with_modulated_dcn=with_modulated_dcn, deformable_groups=deformable_groups))
                in_channels = out_channels
            name = f"layer{index}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stages.append(name)
            stride *= first_stride
            stage_channels.append(out_channels)
            stage_strides.append(stride)

        self.return_stages = tuple(return_stages)
        self.out_channels = [stage_channels[i - 1] for i in self.return_stages]
        self.strides = [stage_strides[i - 1] for i in self.return_stages]
        self._freeze_backbone(freeze_at)

    def _freeze_backbone(self, freeze_at: int) -> None:
        """requires_grad False for the stem (freeze_at >= 1) and layer1..layer{freeze_at-1}."""
        for stage_index in range(max(freeze_at, 0)):
            if stage_index == 0:
                module = self.stem
            elif stage_index <= len(self.stages):
                module = getattr(self, f"layer{stage_index}")
            else:
                break
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor, masks: Optional[PaddingMask] = None) -> List[torch.Tensor]:
        """``masks``: the batch's :class:`PaddingMask` for batch-invariant inference (None: the
        plain forward)."""
        x = self.stem(x) if masks is None else self.stem(x, masks)
        features = {}
        stride = 4
        for index, name in enumerate(self.stages, 1):
            if masks is None:
                x = getattr(self, name)(x)
            else:
                for block in getattr(self, name):
                    x = block(x, masks, stride)
                    stride *= block.stride
            features[index] = x
        return [features[i] for i in self.return_stages]
