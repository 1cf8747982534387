"""ResNet/ResNeXt bodies: shapes, parameter counts against torchvision's published totals, names,
freezing, FrozenBatchNorm2d, GroupNorm and the registry."""
import pytest
import torch
from torch import nn

from maskrcnn_benchmark.config import cfg as _default_cfg
from maskrcnn_benchmark.layers import FrozenBatchNorm2d
from maskrcnn_benchmark.modeling.backbone import BACKBONES, ResNet, build_backbone, build_resnet_body
from maskrcnn_benchmark.modeling.backbone.resnet import RESNET_DEPTHS


def make_cfg(conv_body="R-50-FPN-RETINANET", **resnets):
    cfg = _default_cfg.clone()
    cfg.MODEL.BACKBONE.CONV_BODY = conv_body
    cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 256
    if conv_body.startswith(("R-18", "R-34")):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    for key, value in resnets.items():
        cfg.MODEL.RESNETS[key] = value
    return cfg


def num_weights(module: nn.Module) -> int:
    """Parameters plus frozen-BN affine buffers (what torchvision counts as parameters)."""
    return sum(v.numel() for k, v in module.state_dict().items()
               if not k.endswith(("running_mean", "running_var")))


@pytest.mark.parametrize("depth,channels", [(18, [64, 128, 256, 512]), (50, [256, 512, 1024, 2048])])
@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_body_output_shapes(depth, channels, stride_in_1x1):
    block, stage_blocks = RESNET_DEPTHS[depth]
    device = "cpu" if stride_in_1x1 else "meta"  # one real forward per depth keeps the test fast
    with torch.device(device):
        body = ResNet(stage_blocks, block, stride_in_1x1=stride_in_1x1,
                      res2_out_channels=channels[0], freeze_at=0)
        outs = body(torch.randn(1, 3, 128, 160))
    assert [tuple(o.shape) for o in outs] == [(1, c, 128 // s, 160 // s)
                                              for c, s in zip(channels, (4, 8, 16, 32))]
    assert body.out_channels == channels and body.strides == [4, 8, 16, 32]


def test_return_stages_and_res5_dilation():
    body = ResNet((2, 2, 2, 2), "basic", res2_out_channels=64, res5_dilation=2,
                  return_stages=(4, 2))
    c5, c3 = body(torch.randn(1, 3, 64, 64))
    assert c5.shape == (1, 512, 4, 4) and c3.shape == (1, 128, 8, 8)
    assert body.strides == [16, 8]
    c4_only = ResNet((2, 2, 2, 2), "basic", res2_out_channels=64, return_stages=(3,))
    assert not hasattr(c4_only, "layer4") and c4_only.stages == ["layer1", "layer2", "layer3"]


# torchvision's published parameter totals minus the ImageNet fc layer (in * 1000 + 1000).
@pytest.mark.parametrize("depth,groups,width,expected", [
    (18, 1, 64, 11_689_512 - 513_000),
    (34, 1, 64, 21_797_672 - 513_000),
    (50, 1, 64, 25_557_032 - 2_049_000),
    (101, 1, 64, 44_549_160 - 2_049_000),
    (101, 32, 8, 88_791_336 - 2_049_000),   # ResNeXt-101 32x8d
    (101, 64, 4, 83_455_272 - 2_049_000),   # ResNeXt-101 64x4d
])
def test_parameter_counts_match_torchvision(depth, groups, width, expected):
    cfg = make_cfg(f"R-{depth}-FPN-RETINANET", NUM_GROUPS=groups, WIDTH_PER_GROUP=width,
                   STRIDE_IN_1X1=groups == 1)
    with torch.device("meta"):
        body = build_resnet_body(cfg, return_stages=(1, 2, 3, 4))
    assert num_weights(body) == expected
    # FrozenBN affine values are buffers; only convs are parameters.
    assert all(p.dim() == 4 for p in body.parameters())


def test_parameter_names_follow_maskrcnn_benchmark():
    with torch.device("meta"):
        model = build_backbone(make_cfg("R-50-FPN-RETINANET"))
    keys = list(model.state_dict().keys())
    assert keys[:6] == ["body.stem.conv1.weight", "body.stem.bn1.weight", "body.stem.bn1.bias",
                        "body.stem.bn1.running_mean", "body.stem.bn1.running_var",
                        "body.layer1.0.downsample.0.weight"]
    for key in ["body.layer1.0.downsample.1.weight", "body.layer1.0.conv1.weight",
                "body.layer1.2.bn3.bias", "body.layer3.5.conv2.weight",
                "body.layer4.2.bn3.running_var", "fpn.fpn_inner2.weight", "fpn.fpn_layer4.bias",
                "fpn.top_blocks.p6.weight", "fpn.top_blocks.p7.bias"]:
        assert key in keys, key
    assert not any(k.startswith(("fpn.fpn_inner1", "fpn.fpn_layer1", "body.layer3.6.")) for k in keys)
    assert model.state_dict()["body.layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    # stride placement: MSRA puts it on the 1x1, torchvision/ResNeXt on the 3x3.
    assert model.body.layer2[0].conv1.stride == (2, 2) and model.body.layer2[0].conv2.stride == (1, 1)
    with torch.device("meta"):
        x101 = build_resnet_body(make_cfg("R-101-FPN-RETINANET", NUM_GROUPS=32, WIDTH_PER_GROUP=8,
                                          STRIDE_IN_1X1=False), (1, 2, 3, 4))
    assert x101.layer2[0].conv1.stride == (1, 1) and x101.layer2[0].conv2.stride == (2, 2)
    assert x101.layer1[0].conv2.groups == 32 and x101.layer1[0].conv2.weight.shape == (256, 8, 3, 3)


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_conv_body_at(freeze_at):
    cfg = make_cfg("R-18-FPN-RETINANET")
    cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT = freeze_at
    model = build_backbone(cfg)
    frozen_prefixes = ["body.stem.", "body.layer1.", "body.layer2.", "body.layer3.",
                       "body.layer4."][:freeze_at]
    for name, p in model.named_parameters():
        expect_frozen = name.startswith(tuple(frozen_prefixes)) if frozen_prefixes else False
        assert p.requires_grad == (not expect_frozen), name
    assert all(p.requires_grad for p in model.fpn.parameters())


def test_frozen_bn_matches_eval_batchnorm():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(7, eps=1e-5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3)
    bn.eval()
    x = torch.randn(2, 7, 5, 6)
    frozen = FrozenBatchNorm2d(7, eps=1e-5)
    frozen.load_state_dict(bn.state_dict())  # torchvision keys incl. num_batches_tracked
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-5)
    converted = FrozenBatchNorm2d.convert_frozen_batchnorm(nn.Sequential(bn))
    assert isinstance(converted[0], FrozenBatchNorm2d) and converted[0].eps == 1e-5
    torch.testing.assert_close(converted(x), bn(x), rtol=1e-5, atol=1e-5)
    # hand formula with the default eps = 0
    f0 = FrozenBatchNorm2d(7)
    f0.load_state_dict(bn.state_dict())
    ref = ((x - bn.running_mean[None, :, None, None]) / bn.running_var[None, :, None, None].sqrt()
           * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])
    torch.testing.assert_close(f0(x), ref.detach(), rtol=1e-5, atol=1e-5)
    assert not list(f0.parameters())
    assert f0(x.half()).dtype == torch.float16


def test_frozen_bn_loads_affine_only_checkpoint():
    frozen = FrozenBatchNorm2d(3)
    frozen.running_mean.fill_(5.0)
    frozen.running_var.fill_(7.0)
    frozen.load_state_dict({"weight": torch.tensor([1.0, 2.0, 3.0]), "bias": torch.zeros(3)})
    assert torch.equal(frozen.running_mean, torch.zeros(3))
    assert torch.equal(frozen.running_var, torch.ones(3))
    x = torch.randn(1, 3, 2, 2)
    torch.testing.assert_close(frozen(x), x * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1))


@pytest.mark.parametrize("option", ["USE_GN", "TRANS_FUNC"])
def test_group_norm_option(option):
    cfg = make_cfg("R-18-FPN-RETINANET")
    if option == "USE_GN":
        cfg.MODEL.BACKBONE.USE_GN = True
    else:
        cfg.MODEL.RESNETS.TRANS_FUNC = "BasicBlockWithGN"
        cfg.MODEL.RESNETS.STEM_FUNC = "StemWithGN"
    cfg.MODEL.FPN.USE_GN = True
    cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT = 2
    model = build_backbone(cfg)
    assert isinstance(model.body.stem.bn1, nn.GroupNorm) and model.body.stem.bn1.num_groups == 32
    assert isinstance(model.body.layer2[0].downsample[1], nn.GroupNorm)
    assert not model.body.stem.bn1.weight.requires_grad  # frozen with the stem
    assert model.body.layer2[0].bn1.weight.requires_grad
    keys = model.state_dict().keys()
    assert "fpn.fpn_inner2.0.weight" in keys and "fpn.fpn_inner2.1.weight" in keys
    outs = model(torch.randn(1, 3, 64, 96))
    assert [o.shape[-2:] for o in outs] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]


def test_group_norm_dim_per_gp():
    cfg = make_cfg("R-50-C4", TRANS_FUNC="BottleneckWithGN", STEM_FUNC="StemWithGN")
    cfg.MODEL.GROUP_NORM.DIM_PER_GP = 16
    with torch.device("meta"):
        body = build_resnet_body(cfg, (3,))
    assert body.stem.bn1.num_groups == 64 // 16 and body.layer3[0].bn3.num_groups == 1024 // 16


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="RES2_OUT_CHANNELS"):
        build_resnet_body(make_cfg("R-18-FPN-RETINANET", RES2_OUT_CHANNELS=256), (1, 2, 3, 4))
    with pytest.raises(ValueError, match="TRANS_FUNC"):
        build_resnet_body(make_cfg("R-50-C4", TRANS_FUNC="Nope"), (3,))
    with pytest.raises(ValueError, match="basic-block"):
        build_resnet_body(make_cfg("R-50-C4", TRANS_FUNC="BasicBlockWithFixedBatchNorm"), (3,))
    with pytest.raises(KeyError, match="R-51-FPN"):
        build_backbone(make_cfg("R-51-FPN"))


def test_dcn_stage_uses_dfconv2d():
    kwargs = dict(stage_blocks=(1, 1, 1, 1), stage_with_dcn=(False, True, False, False),
                  with_modulated_dcn=True, num_groups=2, width_per_group=8, res2_out_channels=32,
                  stride_in_1x1=False, freeze_at=0)
    try:
        body = ResNet(**kwargs)
    except RuntimeError as e:
        assert "not available yet" in str(e)
        pytest.skip("DFConv2d not available yet")
    keys = body.state_dict().keys()
    assert "layer2.0.conv2.conv.weight" in keys
    assert any(k.startswith("layer2.0.conv2.offset.") for k in keys)
    assert "layer1.0.conv2.weight" in keys and "layer3.0.conv2.weight" in keys
    assert body.layer2[0].conv2.conv.weight.shape == (32, 16, 3, 3)  # grouped deformable conv
    try:
        outs = body(torch.randn(1, 3, 64, 64))
    except ImportError as e:  # compiled op not built
        pytest.skip(str(e))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 16, 16), (1, 64, 8, 8), (1, 128, 4, 4),
                                              (1, 256, 2, 2)]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_registry_sweep_shapes(name):
    """Every registered body builds, and its outputs have out_channels and the stated strides."""
    model_device = "cpu" if name == "R-18-FPN-RETINANET" else "meta"
    with torch.device(model_device):
        model = build_backbone(make_cfg(name))
        outs = model(torch.zeros(1, 3, 128, 160))
    assert len(outs) == len(model.strides)
    for out, stride in zip(outs, model.strides):
        assert tuple(out.shape) == (1, model.out_channels, -(-128 // stride), -(-160 // stride))


def test_add_residual_in_place_only_without_promotion():
    from maskrcnn_benchmark.modeling.backbone.resnet import _add_residual

    out, identity = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    expected = out + identity
    res = _add_residual(out, identity)
    assert res is out and torch.equal(res, expected)
    low = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    res = _add_residual(low, identity)  # bf16 + fp32 promotes: a new fp32 tensor as `+` gives
    assert res is not low and res.dtype == torch.float32 and torch.equal(res, low + identity)
