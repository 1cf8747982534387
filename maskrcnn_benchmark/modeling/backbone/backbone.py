"""Backbone registry and the cfg -> module builders (the only code here that reads cfg).

Every backbone is ``nn.Sequential(OrderedDict(body=ResNet, [fpn=FPN]))`` so parameter names are
``body.stem.conv1.weight``, ``body.layer1.0.conv1.weight``, ``fpn.fpn_inner2.weight``,
``fpn.top_blocks.p6.weight``, ... exactly as maskrcnn-benchmark / ATSS checkpoints. The returned
module has ``out_channels`` (int, channels of every output) and ``strides`` (list, pixels).

Bodies ("R-<depth>-<kind>", depth 18, 34, 50, 101, 152; ResNeXt = the same names with
MODEL.RESNETS.NUM_GROUPS / WIDTH_PER_GROUP set):
- ``*-FPN-RETINANET``: [P3, P4, P5, P6, P7] (strides 8..128) from C3-C5; P6 from C5
  (MODEL.RETINANET.USE_C5 True) or from P5 (False), P7 = conv(relu(P6)) (conv(P6) with
  MODEL.FPN.RELU_BEFORE_P7 False); with MODEL.FPN.RELU_BEFORE_EXTRA_CONVS, P6 = conv(relu(.)).
- ``*-FPN``: [P2, P3, P4, P5, P6] (strides 4..64), P6 = max-pool of P5.
- ``*-C4`` / ``*-C5``: [C4] (stride 16) / [C5] (stride 32), no FPN.
"""
from collections import OrderedDict
from typing import List, Optional, Sequence

import torch
from torch import nn

from maskrcnn_benchmark.layers.padding_mask import PaddingMask

from maskrcnn_benchmark.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from maskrcnn_benchmark.modeling.backbone.resnet import RESNET_DEPTHS, ResNet
from maskrcnn_benchmark.modeling.make_layers import conv_with_kaiming_uniform
from maskrcnn_benchmark.utils.registry import Registry

BACKBONES = Registry("BACKBONES")

_TRANS_FUNCS = ("BottleneckWithFixedBatchNorm", "BottleneckWithGN",
                "BasicBlockWithFixedBatchNorm", "BasicBlockWithGN")
_STEM_FUNCS = ("StemWithFixedBatchNorm", "StemWithGN")
_DEPTHS = (18, 34, 50, 101, 152)


def _depth(conv_body: str) -> int:
    return int(conv_body.split("-")[1])


def build_resnet_body(cfg, return_stages: Sequence[int]) -> ResNet:
    """ResNet/ResNeXt body from MODEL.BACKBONE.* / MODEL.RESNETS.* / MODEL.GROUP_NORM.*.

    The depth comes from MODEL.BACKBONE.CONV_BODY ("R-50-..."), and with it the block type
    (basic for 18/34, bottleneck otherwise). The norm is GroupNorm when MODEL.BACKBONE.USE_GN is
    set or TRANS_FUNC / STEM_FUNC name a "...WithGN" variant, FrozenBatchNorm2d otherwise.
    """
    r = cfg.MODEL.RESNETS
    conv_body = cfg.MODEL.BACKBONE.CONV_BODY
    depth = _depth(conv_body)
    block, stage_blocks = RESNET_DEPTHS[depth]
    if r.TRANS_FUNC not in _TRANS_FUNCS:
        raise ValueError(f"MODEL.RESNETS.TRANS_FUNC {r.TRANS_FUNC!r} not in {_TRANS_FUNCS}")
    if r.STEM_FUNC not in _STEM_FUNCS:
        raise ValueError(f"MODEL.RESNETS.STEM_FUNC {r.STEM_FUNC!r} not in {_STEM_FUNCS}")
    if r.TRANS_FUNC.startswith("BasicBlock") and block != "basic":
        raise ValueError(f"{conv_body}: TRANS_FUNC {r.TRANS_FUNC} needs a basic-block depth (18/34)")
    if block == "basic" and (r.RES2_OUT_CHANNELS != r.STEM_OUT_CHANNELS or r.NUM_GROUPS != 1):
        raise ValueError(
            f"{conv_body} uses basic blocks: set MODEL.RESNETS.RES2_OUT_CHANNELS to "
            f"STEM_OUT_CHANNELS ({r.STEM_OUT_CHANNELS}, got {r.RES2_OUT_CHANNELS}) and "
            f"NUM_GROUPS 1 (got {r.NUM_GROUPS})")
    use_gn = (cfg.MODEL.BACKBONE.USE_GN or r.TRANS_FUNC.endswith("WithGN")
              or r.STEM_FUNC == "StemWithGN")
    gn = cfg.MODEL.GROUP_NORM
    return ResNet(
        stage_blocks=stage_blocks, block=block, num_groups=r.NUM_GROUPS,
        width_per_group=r.WIDTH_PER_GROUP, stride_in_1x1=r.STRIDE_IN_1X1,
        stem_out_channels=r.STEM_OUT_CHANNELS, res2_out_channels=r.RES2_OUT_CHANNELS,
        norm="GN" if use_gn else "FrozenBN", gn_dim_per_gp=gn.DIM_PER_GP,
        gn_num_groups=gn.NUM_GROUPS, gn_eps=gn.EPSILON,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT,
        stage_with_dcn=tuple(r.STAGE_WITH_DCN), with_modulated_dcn=r.WITH_MODULATED_DCN,
        deformable_groups=r.DEFORMABLE_GROUPS, res5_dilation=r.RES5_DILATION,
        return_stages=return_stages)


def _fpn_conv_block(cfg):
    gn = cfg.MODEL.GROUP_NORM
    return conv_with_kaiming_uniform(cfg.MODEL.FPN.USE_GN, cfg.MODEL.FPN.USE_RELU,
                                     gn_dim_per_gp=gn.DIM_PER_GP, gn_num_groups=gn.NUM_GROUPS,
                                     gn_eps=gn.EPSILON)


class Backbone(nn.Sequential):
    """``Sequential(body[, fpn])`` (checkpoint names ``body.*``, ``fpn.*``) whose forward also
    takes the batch's :class:`PaddingMask` (batch-invariant inference).

    Attributes: ``out_channels`` (int), ``strides`` (pixels of each output).
    Shape: x [B, 3, H, W] -> list of [B, out_channels, H_l, W_l].
    """

    def forward(self, x: torch.Tensor, masks: Optional[PaddingMask] = None) -> List[torch.Tensor]:
        if masks is None:
            return super().forward(x)
        features = self.body(x, masks)
        if "fpn" in self._modules:
            features = self.fpn(features, masks, self.body.strides)
        return features


def _sequential(out_channels: int, strides: Sequence[int], **modules: nn.Module) -> nn.Sequential:
    model = Backbone(OrderedDict(modules))
    model.out_channels = out_channels
    model.strides = list(strides)
    return model


def build_resnet_backbone(cfg) -> nn.Sequential:
    """``*-C4`` / ``*-C5``: the body alone, returning [C4] or [C5]."""
    stage = {"C4": 3, "C5": 4}[cfg.MODEL.BACKBONE.CONV_BODY.split("-")[2]]
    body = build_resnet_body(cfg, return_stages=(stage,))
    return _sequential(body.out_channels[0], body.strides, body=body)


def build_resnet_fpn_backbone(cfg) -> nn.Sequential:
    """``*-FPN``: [P2, P3, P4, P5, P6], P6 = max-pool(P5)."""
    body = build_resnet_body(cfg, return_stages=(1, 2, 3, 4))
    out_channels = cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS
    fpn = FPN(body.out_channels, out_channels, _fpn_conv_block(cfg), top_blocks=LastLevelMaxPool())
    return _sequential(out_channels, [4, 8, 16, 32, 64], body=body, fpn=fpn)


def build_resnet_fpn_p3p7_backbone(cfg) -> nn.Sequential:
    """``*-FPN-RETINANET``: [P3, P4, P5, P6, P7] from C3-C5 (C2 is computed but not used)."""
    body = build_resnet_body(cfg, return_stages=(1, 2, 3, 4))
    out_channels = cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS
    use_c5 = cfg.MODEL.RETINANET.USE_C5
    c5_channels = body.out_channels[-1]
    fpn = FPN([0] + body.out_channels[1:], out_channels, _fpn_conv_block(cfg),
              top_blocks=LastLevelP6P7(c5_channels if use_c5 else out_channels, out_channels,
                                       use_p5=not use_c5,
                                       relu_before_p6=cfg.MODEL.FPN.RELU_BEFORE_EXTRA_CONVS,
                                       relu_before_p7=cfg.MODEL.FPN.RELU_BEFORE_P7))
    return _sequential(out_channels, [8, 16, 32, 64, 128], body=body, fpn=fpn)


for _d in _DEPTHS:
    BACKBONES.register(f"R-{_d}-FPN-RETINANET")(build_resnet_fpn_p3p7_backbone)
    BACKBONES.register(f"R-{_d}-FPN")(build_resnet_fpn_backbone)
    BACKBONES.register(f"R-{_d}-C4")(build_resnet_backbone)
    BACKBONES.register(f"R-{_d}-C5")(build_resnet_backbone)


def build_backbone(cfg) -> nn.Sequential:
    """Backbone named by MODEL.BACKBONE.CONV_BODY (see the module docstring for the names)."""
    return BACKBONES[cfg.MODEL.BACKBONE.CONV_BODY](cfg)
