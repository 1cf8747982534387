"""FrozenBatchNorm2d folding (TEST.FOLD_FROZEN_BN) and the fused conv + FrozenBN of training (conv_norm),
against the unfolded conv -> norm computed in float64."""
import copy

import pytest
import torch
from torch import nn

from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.layers import FrozenBatchNorm2d, fold_frozen_batchnorm
from maskrcnn_benchmark.layers.batch_norm import conv_norm
from maskrcnn_benchmark.modeling.backbone.resnet import BasicBlock, Bottleneck, Stem
from maskrcnn_benchmark.modeling.dense_heads import set_num_classes
from maskrcnn_benchmark.modeling.detector import build_detection_model, prepare_for_inference
from maskrcnn_benchmark.structures.image_list import to_image_list


def _random_frozen_bn(c, eps, g):
    bn = FrozenBatchNorm2d(c, eps=eps)
    bn.weight.copy_(torch.rand(c, generator=g) * 2 - 0.5)
    bn.bias.copy_(torch.randn(c, generator=g))
    bn.running_mean.copy_(torch.randn(c, generator=g))
    bn.running_var.copy_(torch.rand(c, generator=g) + 0.1)
    return bn


def _reference(conv, bn, x):
    """bn(conv(x)) by the formula, in float64."""
    w, b = conv.weight.double(), None if conv.bias is None else conv.bias.double()
    y = nn.functional.conv2d(x.double(), w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
    return (y - bn.running_mean.double()[:, None, None]) * scale[:, None, None] + bn.bias.double()[:, None, None]


class _Block(nn.Module):
    def __init__(self, g):
        super().__init__()
        self.conv1 = nn.Conv2d(5, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = _random_frozen_bn(8, 0.0, g)
        self.conv2 = nn.Conv2d(8, 6, 1, bias=True, groups=2)
        self.bn2 = _random_frozen_bn(6, 1e-5, g)
        self.downsample = nn.Sequential(nn.Conv2d(5, 6, 1, stride=2, bias=False), _random_frozen_bn(6, 0.0, g))

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.downsample(x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fold_matches_conv_then_norm(channels_last):
    g = torch.Generator().manual_seed(0)
    block = _Block(g)
    x = torch.randn(2, 5, 17, 13, generator=g)
    if channels_last:
        block = block.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    h = torch.relu(_reference(block.conv1, block.bn1, x))
    ref = _reference(block.conv2, block.bn2, h.float()) + _reference(block.downsample[0], block.downsample[1], x)
    with torch.no_grad():
        before = block(x)
    folded = copy.deepcopy(block)
    assert fold_frozen_batchnorm(folded) == 3
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.downsample[1], nn.Identity)
    assert all(c.bias is not None for c in (folded.conv1, folded.conv2, folded.downsample[0]))
    assert (folded.conv2.groups, folded.conv1.stride) == (2, (2, 2))
    if channels_last:
        assert folded.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        after = folded(x)
    torch.testing.assert_close(before.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after.double(), ref, rtol=1e-5, atol=1e-5)
    assert fold_frozen_batchnorm(folded) == 0  # nothing left to fold


def test_fold_leaves_unpaired_and_other_norms_alone():
    g = torch.Generator().manual_seed(1)
    m = nn.Module()
    m.conv1 = nn.Conv2d(3, 4, 1)
    m.bn1 = nn.BatchNorm2d(4)                 # trainable BatchNorm: not folded
    m.conv2 = nn.Conv2d(3, 4, 1)
    m.bn3 = _random_frozen_bn(4, 0.0, g)      # no conv3 sibling
    m.seq = nn.Sequential(_random_frozen_bn(3, 0.0, g), nn.Conv2d(3, 4, 1))  # norm before the conv
    state = copy.deepcopy(m.state_dict())
    assert fold_frozen_batchnorm(m) == 0
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())


def _detector_cfg(head):
    cfg = default_cfg.clone()
    cfg.merge_from_file("configs/atss/atss_R_18_FPN_small.yaml")
    cfg.MODEL.HEAD = head
    cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 64
    cfg.MODEL.ATSS.INFERENCE_TH = 0.001
    cfg.MODEL.RETINANET.INFERENCE_TH = 0.001
    cfg.TEST.MEMORY_FORMAT = "contiguous"  # the fold alone (channels-last: test_detector.py)
    set_num_classes(cfg, 4)
    return cfg


@pytest.mark.parametrize("head", ["DYNAMIC_ATSS", "RETINANET"])
def test_folded_detector_keeps_its_detections(head):
    """A ResNet-18 FPN detector whose FrozenBN layers hold non-trivial statistics: the folded copy's
    detections equal the original's up to float32 rounding (same boxes, scores, labels, order)."""
    torch.manual_seed(0)
    cfg = _detector_cfg(head)
    model = build_detection_model(cfg).eval()
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.load_state_dict(_random_frozen_bn(m.num_features, m.eps, g).state_dict())
    num_bn = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    images = to_image_list([torch.randn(3, 96, 128, generator=g), torch.randn(3, 80, 112, generator=g)], 32)
    with torch.no_grad():
        ref = model(images)
    folded = prepare_for_inference(copy.deepcopy(model), cfg)
    assert num_bn == 20 and not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        now = folded(images)
    for a, b in zip(ref, now):
        assert len(a) > 0 and torch.equal(a.get_field("labels"), b.get_field("labels"))
        torch.testing.assert_close(b.bbox, a.bbox, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(b.get_field("scores"), a.get_field("scores"), rtol=1e-4, atol=1e-5)
    cfg.TEST.FOLD_FROZEN_BN = False
    kept = prepare_for_inference(copy.deepcopy(model), cfg)
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in kept.modules()) == num_bn and not kept.training


@pytest.mark.parametrize("fmt, model_flag, expected", [
    ("auto", False, True),  # CPU: channels-last
    ("contiguous", False, False), ("contiguous", True, False), ("channels_last", False, True)])
def test_prepare_for_inference_memory_format(fmt, model_flag, expected):
    cfg = _detector_cfg("ATSS")
    cfg.TEST.MEMORY_FORMAT = fmt
    cfg.MODEL.CHANNELS_LAST = model_flag
    model = prepare_for_inference(build_detection_model(cfg), cfg)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert model.channels_last is expected and not model.training
    fmt_ok = [c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs if c.kernel_size != (1, 1)]
    assert all(f is expected for f in fmt_ok)


def test_prepare_for_inference_rejects_an_unknown_memory_format():
    cfg = _detector_cfg("ATSS")
    cfg.TEST.MEMORY_FORMAT = "nhwc"
    with pytest.raises(ValueError, match="TEST.MEMORY_FORMAT must be one of"):
        prepare_for_inference(build_detection_model(cfg), cfg)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride, groups, bias, eps", [(1, 1, False, 0.0), (2, 2, True, 1e-5)])
def test_conv_norm_fuses_frozen_bn_forward_and_backward(stride, groups, bias, eps, channels_last):
    """conv_norm(conv, FrozenBN, x) == bn(conv(x)) (float64 formula) with the gradients of the conv's
    weight, bias and of x equal to those of the two-step float64 computation."""
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(6, 8, 3, stride=stride, padding=1, groups=groups, bias=bias)
    bn = _random_frozen_bn(8, eps, g)
    x = torch.randn(2, 6, 11, 9, generator=g)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = conv_norm(conv, bn, x)
    ref_conv = copy.deepcopy(conv).double()
    x64 = x.detach().double().requires_grad_(True)
    ref = _reference(ref_conv, bn, x64)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn(out.shape, generator=g)
    out.backward(grad)
    ref.backward(grad.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad.double(), ref_conv.weight.grad, rtol=1e-5, atol=1e-4)
    if bias:
        torch.testing.assert_close(conv.bias.grad.double(), ref_conv.bias.grad, rtol=1e-5, atol=1e-4)
    assert not any(t.requires_grad for t in bn.buffers())


def test_conv_norm_runs_other_pairs_as_they_are():
    """Trainable BatchNorm, GroupNorm and an Identity (a folded norm) run as norm(conv(x)), exactly."""
    g = torch.Generator().manual_seed(2)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(2, 4, 7, 7, generator=g)
    for norm in (nn.BatchNorm2d(8), nn.GroupNorm(2, 8), nn.Identity()):
        assert torch.equal(conv_norm(conv, norm, x), norm(conv(x)))


@pytest.mark.parametrize("block_type", ["bottleneck", "basic", "stem"])
def test_resnet_blocks_with_frozen_bn_match_the_two_step_forward(block_type):
    """The ResNet blocks (which call conv_norm) equal the same weights run as bn(conv(x)) in float64."""
    g = torch.Generator().manual_seed(3)
    if block_type == "bottleneck":
        block = Bottleneck(8, 4, 16, stride=2, stride_in_1x1=False)
        pairs = [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
    elif block_type == "basic":
        block = BasicBlock(8, 0, 16, stride=2)
        pairs = [("conv1", "bn1"), ("conv2", "bn2")]
    else:
        block = Stem(8)
        pairs = [("conv1", "bn1")]
    for _, bn_name in pairs:
        setattr(block, bn_name, _random_frozen_bn(getattr(block, bn_name).num_features, 0.0, g))
    if block_type != "stem":
        block.downsample[1] = _random_frozen_bn(16, 0.0, g)
    x = torch.randn(2, 3 if block_type == "stem" else 8, 16, 12, generator=g)

    def step(name_c, name_b, h):
        return _reference(getattr(block, name_c), getattr(block, name_b), h)

    x64 = x.double()
    if block_type == "stem":
        ref = nn.functional.max_pool2d(torch.relu(step("conv1", "bn1", x64)), 3, 2, 1)
    else:
        h = x64
        for i, (c, b) in enumerate(pairs):
            h = step(c, b, h)
            if i < len(pairs) - 1:
                h = torch.relu(h)
        ref = torch.relu(h + _reference(block.downsample[0], block.downsample[1], x64))
    torch.testing.assert_close(block(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_conv_norm_under_bf16_autocast_matches_the_unfused_forward():
    """Under CPU bf16 autocast (SOLVER.AMP bf16) the fused conv gives bf16 output close to bn(conv(x))."""
    g = torch.Generator().manual_seed(4)
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    bn = _random_frozen_bn(16, 0.0, g)
    x = torch.randn(2, 8, 10, 10, generator=g)
    ref = _reference(conv, bn, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv_norm(conv, bn, x)
        unfused = bn(conv(x))
    assert out.dtype == torch.bfloat16 and unfused.dtype == torch.bfloat16
    scale = ref.abs().max().item()
    assert (out.double() - ref).abs().max().item() < 0.02 * scale
    assert (unfused.double() - ref).abs().max().item() < 0.02 * scale


def test_conv_norm_keeps_two_steps_where_the_weight_outweighs_the_output():
    """A pair whose weight has more elements than the conv's output (deep layers on small inputs) runs
    as bn(conv(x)) (bit for bit); a larger input of the same pair is fused (equal within rounding)."""
    g = torch.Generator().manual_seed(5)
    conv = nn.Conv2d(32, 64, 3, padding=1, bias=False)  # 18432 weights
    bn = _random_frozen_bn(64, 0.0, g)
    small = torch.randn(1, 32, 8, 8, generator=g)  # output 4096 elements < weights: two steps
    assert torch.equal(conv_norm(conv, bn, small), bn(conv(small)))
    large = torch.randn(1, 32, 24, 24, generator=g)  # output 36864 elements: fused
    fused = conv_norm(conv, bn, large)
    assert not torch.equal(fused, bn(conv(large)))  # a different rounding: the fused path ran
    torch.testing.assert_close(fused.double(), _reference(conv, bn, large), rtol=1e-5, atol=1e-5)
