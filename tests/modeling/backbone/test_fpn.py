"""FPN: a hand-written top-down reference, P6/P7 from C5 or P5, init, GN/ReLU conv blocks."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn_benchmark.config import cfg as _default_cfg
from maskrcnn_benchmark.modeling.backbone import FPN, LastLevelMaxPool, LastLevelP6P7, build_backbone
from maskrcnn_benchmark.modeling.make_layers import conv_with_kaiming_uniform, group_norm


def upsample2(x):
    """Nearest x2 upsampling written with repeat_interleave (independent of F.interpolate)."""
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def conv(module, x, stride=1):
    pad = (module.weight.shape[-1] - 1) // 2
    return F.conv2d(x, module.weight, module.bias, stride=stride, padding=pad)


@pytest.mark.parametrize("use_p5", [True, False])
def test_fpn_matches_reference(use_p5):
    torch.manual_seed(0)
    out = 6
    top = LastLevelP6P7(out if use_p5 else 16, out, use_p5=use_p5)
    fpn = FPN([0, 4, 8, 16], out, conv_with_kaiming_uniform(), top_blocks=top)
    for p in fpn.parameters():  # non-zero biases so they are checked too
        nn.init.normal_(p)
    c2, c3, c4, c5 = (torch.randn(1, c, 32 // s, 40 // s) for c, s in [(3, 1), (4, 2), (8, 4), (16, 8)])
    with torch.no_grad():
        results = fpn([c2, c3, c4, c5])
        inner5 = conv(fpn.fpn_inner4, c5)
        inner4 = conv(fpn.fpn_inner3, c4) + upsample2(inner5)
        inner3 = conv(fpn.fpn_inner2, c3) + upsample2(inner4)
        p3, p4, p5 = conv(fpn.fpn_layer2, inner3), conv(fpn.fpn_layer3, inner4), conv(fpn.fpn_layer4, inner5)
        p6 = conv(top.p6, p5 if use_p5 else c5, stride=2)
        p7 = conv(top.p7, p6.clamp(min=0), stride=2)
    assert len(results) == 5
    for got, ref in zip(results, [p3, p4, p5, p6, p7]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert not hasattr(fpn, "fpn_inner1")
    with pytest.raises(ValueError, match="expects 4 input levels"):
        fpn([c3, c4, c5])


def test_last_level_max_pool():
    fpn = FPN([2, 2], 3, conv_with_kaiming_uniform(), top_blocks=LastLevelMaxPool())
    x = [torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)]
    p4, p5, p6 = fpn(x)
    torch.testing.assert_close(p6, p5[:, :, ::2, ::2])


def make_cfg(conv_body, use_c5):
    cfg = _default_cfg.clone()
    cfg.MODEL.BACKBONE.CONV_BODY = conv_body
    cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 256
    cfg.MODEL.RETINANET.USE_C5 = use_c5
    if conv_body.startswith("R-18"):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    return cfg


@pytest.mark.parametrize("use_c5,p6_in", [(True, 2048), (False, 256)])
def test_p6_source_r50(use_c5, p6_in):
    with torch.device("meta"):
        model = build_backbone(make_cfg("R-50-FPN-RETINANET", use_c5))
    assert model.fpn.top_blocks.p6.weight.shape == (256, p6_in, 3, 3)
    assert model.fpn.top_blocks.use_p5 == (not use_c5)
    assert model.fpn.fpn_inner2.weight.shape == (256, 512, 1, 1)
    assert model.fpn.fpn_inner4.weight.shape == (256, 2048, 1, 1)


@pytest.mark.parametrize("use_c5", [True, False])
def test_r18_retinanet_forward(use_c5):
    model = build_backbone(make_cfg("R-18-FPN-RETINANET", use_c5))
    assert model.fpn.top_blocks.p6.in_channels == (512 if use_c5 else 256)
    assert model.out_channels == 256 and model.strides == [8, 16, 32, 64, 128]
    outs = model(torch.randn(1, 3, 128, 160))
    assert [tuple(o.shape) for o in outs] == [(1, 256, 16, 20), (1, 256, 8, 10), (1, 256, 4, 5),
                                              (1, 256, 2, 3), (1, 256, 1, 2)]
    # sizes that are not multiples of 32 still work (upsampling to the lateral's size)
    outs = model(torch.randn(1, 3, 100, 130))
    assert [tuple(o.shape[-2:]) for o in outs] == [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]


def test_conv_init_kaiming_uniform_a1_zero_bias():
    torch.manual_seed(0)
    top = LastLevelP6P7(64, 32)
    make_conv = conv_with_kaiming_uniform()
    c = make_conv(64, 32, 3)
    for m in (c, top.p6, top.p7):
        fan_in = m.weight[0].numel()
        bound = math.sqrt(6.0 / ((1 + 1 ** 2) * fan_in))
        assert m.weight.abs().max() <= bound
        assert m.weight.abs().max() > 0.9 * bound  # uniform over the whole range
        assert torch.count_nonzero(m.bias) == 0


def test_conv_with_gn_and_relu():
    block = conv_with_kaiming_uniform(use_gn=True, use_relu=True, gn_num_groups=4)(8, 16, 3, 2)
    assert isinstance(block, nn.Sequential) and len(block) == 3
    assert block[0].bias is None and block[0].stride == (2, 2) and block[0].padding == (1, 1)
    assert isinstance(block[1], nn.GroupNorm) and block[1].num_groups == 4
    assert isinstance(block[2], nn.ReLU)
    dilated = conv_with_kaiming_uniform()(8, 8, 3, dilation=2)
    assert dilated.padding == (2, 2)


def test_group_norm_groups():
    assert group_norm(64).num_groups == 32
    assert group_norm(64, dim_per_gp=16).num_groups == 4
    assert group_norm(64, divisor=2).num_groups == 16
    with pytest.raises(ValueError, match="not divisible"):
        group_norm(48, num_groups=32)
