"""Winograd F(4x4, 3x3) convolution (MODEL.WINOGRAD): the transform matrices against the
definition of correlation in float64, the three CPU transforms against plain-PyTorch re-derivations,
and winograd_conv2d / WinogradConv2d / the detector against F.conv2d in float64 (outputs and
gradients)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.layers import FrozenBatchNorm2d, WinogradConv2d, box_iou, convert_to_winograd, winograd_conv2d
from maskrcnn_benchmark.layers import _ops, winograd
from maskrcnn_benchmark.layers.batch_norm import conv_norm, fold_frozen_batchnorm
from maskrcnn_benchmark.modeling.dense_heads import set_num_classes
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import to_image_list

OPS = _ops.load_ops()
# float32 Winograd F(4x4, 3x3) vs a float64 convolution, relative to the largest magnitude
# (measured ~1e-5; a direct float32 convolution: ~3e-7)
TOL = 5e-5


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _tiles_reference(x, a=6, m=4):
    """x [N, C, H, W] (float64) -> input tiles [N, th, tw, C, a, a] of the padded image (padding 1
    on the top / left, zeros up to th * m + 2 rows / tw * m + 2 columns)."""
    n, c, h, w = x.shape
    th, tw = -(-h // m), -(-w // m)
    xp = F.pad(x, (1, tw * m + 1 - w, 1, th * m + 1 - h))
    return xp.unfold(2, a, m).unfold(3, a, m).permute(0, 2, 3, 1, 4, 5)


def test_matrices_compute_correlation_exactly():
    """AT [(G g G^T) * (BT d BT^T)] AT^T equals the 3x3 correlation of every 6x6 tile d, in float64."""
    BT, G, AT = winograd.transform_matrices(torch.float64)
    g = torch.Generator().manual_seed(0)
    d = torch.randn(50, 6, 6, generator=g, dtype=torch.float64)
    f = torch.randn(50, 3, 3, generator=g, dtype=torch.float64)
    y = AT @ ((G @ f @ G.T) * (BT @ d @ BT.T)) @ AT.T
    ref = torch.stack([torch.stack([(d[:, i:i + 3, j:j + 3] * f).sum((1, 2)) for j in range(4)], -1)
                       for i in range(4)], -2)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 5, 9, 14), (1, 16, 8, 8), (1, 3, 1, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_input_transform_matches_reference(shape, channels_last):
    BT, _, _ = winograd.transform_matrices(torch.float64)
    x = torch.randn(shape)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    V = OPS.winograd_input_transform(x, BT.float())
    tiles = _tiles_reference(x.double())                      # N th tw C 6 6
    ref = torch.einsum("ij,nhwcjk,lk->ilnhwc", BT, tiles, BT).reshape(36, -1, shape[1])
    assert V.shape == ref.shape
    torch.testing.assert_close(V.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, h, w, k", [(2, 9, 14, 7), (1, 8, 8, 16), (1, 1, 3, 2)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_output_transform_and_its_backward_match_reference(n, h, w, k, with_bias):
    """Y = crop(AT M AT^T) + bias per tile, and the backward op is its adjoint: <grad_M, M> equals
    <grad_Y, Y(M) without bias> for random M and grad_Y, and grad_M equals autograd of the
    reference."""
    _, _, AT = winograd.transform_matrices(torch.float64)
    th, tw = -(-h // 4), -(-w // 4)
    g = torch.Generator().manual_seed(1)
    M = torch.randn(36, n * th * tw, k, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(k, generator=g, dtype=torch.float64) if with_bias else None
    Y = OPS.winograd_output_transform(M.detach().float(), AT.float(), None if bias is None else bias.float(), n, h, w)
    assert Y.shape == (n, k, h, w) and Y.is_contiguous(memory_format=torch.channels_last)
    tiles = torch.einsum("ij,jlntk,ml->ntkim", AT, M.view(6, 6, n, th * tw, k), AT)   # n, tiles, k, 4, 4
    ref = tiles.reshape(n, th, tw, k, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(n, k, th * 4, tw * 4)[:, :, :h, :w]
    if bias is not None:
        ref = ref + bias.view(1, -1, 1, 1)
    torch.testing.assert_close(Y.double(), ref.detach(), rtol=1e-5, atol=1e-4)
    grad_Y = torch.randn(n, k, h, w, generator=g, dtype=torch.float64)
    (ref * grad_Y).sum().backward()
    grad_M = OPS.winograd_output_transform_backward(grad_Y.float(), AT.float())
    assert grad_M.shape == M.shape
    torch.testing.assert_close(grad_M.double(), M.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape, k", [((2, 8, 13, 18), 6), ((1, 32, 16, 16), 32), ((1, 4, 5, 3), 3)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_winograd_conv2d_matches_float64_conv_with_gradients(shape, k, channels_last, with_bias):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(k, shape[1], 3, 3, generator=g) * 0.1
    b = torch.randn(k, generator=g) if with_bias else None
    leaves = [t.requires_grad_(True) for t in (x, w, b) if t is not None]
    y = winograd_conv2d(x, w, b)
    assert y.shape == (shape[0], k, *shape[2:])
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    grad_y = torch.randn(y.shape, generator=g)
    grads = torch.autograd.grad(y, leaves, grad_y)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    xd, wd = ref_leaves[:2]
    yd = F.conv2d(xd, wd, ref_leaves[2] if with_bias else None, padding=1)
    ref_grads = torch.autograd.grad(yd, ref_leaves, grad_y.double())
    assert _rel(y, yd) < TOL
    for got, ref, leaf in zip(grads, ref_grads, leaves):
        assert got.shape == leaf.shape and _rel(got, ref) < TOL
    assert grads[0].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_winograd_conv2d_rejects_bad_shapes():
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"weight \[K, C, 3, 3\].*weight \[2, 4, 5, 5\]"):
        winograd_conv2d(x, torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"same C.*weight \[2, 3, 3, 3\]"):
        winograd_conv2d(x, torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match=r"bias must have shape \[2\]"):
        winograd_conv2d(x, torch.randn(2, 4, 3, 3), torch.randn(3))
    with pytest.raises(RuntimeError, match="must be float32"):
        OPS.winograd_input_transform(x.double(), winograd.transform_matrices()[0])
    with pytest.raises(RuntimeError, match=r"M must be \[36, 4, K\]"):
        OPS.winograd_output_transform(torch.randn(36, 3, 2), winograd.transform_matrices()[2], None, 1, 8, 8)


def _count_winograd_calls(monkeypatch):
    calls = []
    real = winograd.winograd_conv2d

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(winograd, "winograd_conv2d", spy)
    return calls


def test_convert_only_eligible_convs_and_dispatch(monkeypatch):
    """convert_to_winograd changes the class of the 3x3 / stride 1 / padding 1 convs only (state dict
    unchanged); WinogradConv2d uses Winograd on CPU float32 maps of >= MIN_TILES tiles outside
    autocast, and F.conv2d (bit-equal to nn.Conv2d) elsewhere."""
    torch.manual_seed(0)
    c = winograd.MIN_CHANNELS
    net = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, stride=2, padding=1),
                        nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=2, dilation=2),
                        nn.Conv2d(c, c, 3, padding=1, groups=2), nn.Conv2d(c, c, 3, padding=1, bias=False),
                        nn.Conv2d(c, c - 1, 3, padding=1))
    ref = copy.deepcopy(net)
    state = copy.deepcopy(net.state_dict())
    assert convert_to_winograd(net) == 3
    assert [type(m) is WinogradConv2d for m in net] == [True, False, False, False, False, True, True]
    assert net.state_dict().keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert convert_to_winograd(net) == 0
    calls = _count_winograd_calls(monkeypatch)
    big = torch.randn(1, c, 40, 64)      # 10 x 16 tiles = 160 >= MIN_TILES
    with torch.no_grad():
        out, expected = net(big), ref(big)
    # the later 3x3s see the stride-2 map, 20 x 32 = 5 x 8 tiles; the last has c - 1 < MIN_CHANNELS
    # outputs: direct
    assert calls == [big.shape] and _rel(out, expected) < TOL
    small = torch.randn(1, c, 12, 16)    # 3 x 4 tiles
    with torch.no_grad():
        assert torch.equal(net(small), ref(small))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(net(big), ref(big))
        assert torch.equal(net.double()(big.double()), ref.double()(big.double()))
    assert len(calls) == 1


def test_conv_norm_and_fold_keep_winograd(monkeypatch):
    """A WinogradConv2d followed by a FrozenBatchNorm2d: conv_norm's fused training path and the
    inference fold both run Winograd and equal the float64 two-step formula."""
    g = torch.Generator().manual_seed(3)
    c, k = winograd.MIN_CHANNELS, winograd.MIN_CHANNELS + 8
    conv = nn.Conv2d(c, k, 3, padding=1, bias=False)
    bn = FrozenBatchNorm2d(k)
    bn.weight.copy_(torch.rand(k, generator=g) + 0.5)
    bn.bias.copy_(torch.randn(k, generator=g))
    bn.running_mean.copy_(torch.randn(k, generator=g))
    bn.running_var.copy_(torch.rand(k, generator=g) + 0.1)
    block = nn.Sequential(conv, bn)
    assert convert_to_winograd(block) == 1
    x = torch.randn(2, c, 36, 40, generator=g, requires_grad=True)
    calls = _count_winograd_calls(monkeypatch)
    scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
    shift = bn.bias.double() - bn.running_mean.double() * scale
    ref = F.conv2d(x.double(), conv.weight.double(), padding=1) * scale.view(-1, 1, 1) + shift.view(-1, 1, 1)
    out = conv_norm(block[0], block[1], x)
    assert _rel(out, ref) < TOL
    grad_ref = torch.autograd.grad(ref.sum(), x)[0]
    assert _rel(torch.autograd.grad(out.sum(), x)[0], grad_ref) < TOL
    assert fold_frozen_batchnorm(block) == 1 and type(block[0]) is WinogradConv2d
    with torch.no_grad():
        assert _rel(block(x), ref) < TOL
    assert len(calls) == 2


def _detector_cfg(head, winograd_on):
    cfg = default_cfg.clone()
    cfg.merge_from_file("configs/atss/atss_R_18_FPN_small.yaml")
    cfg.MODEL.HEAD = head
    cfg.MODEL.WINOGRAD = winograd_on
    cfg.MODEL.ATSS.INFERENCE_TH = 0.001
    cfg.MODEL.FCOS.INFERENCE_TH = 0.001
    set_num_classes(cfg, 4)
    return cfg


# 128-channel 3x3 convs at stride 8 (P3): res3's three stride-1 3x3s, the FPN output conv and 2
# towers x NUM_CONVS (the small config's ATSS: 2, FCOS's default: 4); the predictors (4 classes, 4
# box values, 1) have under MIN_CHANNELS outputs
@pytest.mark.parametrize("head, p3_convs", [("DYNAMIC_ATSS", 3 + 1 + 2 * 2), ("FCOS", 3 + 1 + 2 * 4)])
def test_detector_with_winograd_matches_default(head, p3_convs, monkeypatch):
    """MODEL.WINOGRAD: the same weights give the same losses and gradients (float tolerance) and the
    same detections as the direct convolutions."""
    torch.manual_seed(0)
    ref = build_detection_model(_detector_cfg(head, False))
    model = build_detection_model(_detector_cfg(head, True))
    model.load_state_dict(ref.state_dict())
    num = sum(type(m) is WinogradConv2d for m in model.modules())
    assert num >= 10 and not any(type(m) is WinogradConv2d for m in ref.modules())
    calls = _count_winograd_calls(monkeypatch)
    g = torch.Generator().manual_seed(4)
    # P3 of these images: 2 x 8 x 10 tiles, enough for the Winograd path in the head too
    images = to_image_list([torch.randn(3, 256, 320, generator=g), torch.randn(3, 224, 288, generator=g)], 32)
    targets = []
    for _ in range(2):
        xy = torch.rand(3, 2, generator=g) * 160
        box = BoxList(torch.cat([xy, xy + 24 + torch.rand(3, 2, generator=g) * 100], 1), (320, 256))
        box.add_field("labels", torch.tensor([1, 2, 3]))
        targets.append(box)
    losses_ref = ref(images, targets)
    losses = model(images, targets)
    # at P3 (2 x 8 x 10 tiles) every 3x3 conv runs Winograd; coarser maps have under MIN_TILES tiles
    assert calls.count(torch.Size([2, 128, 32, 40])) == p3_convs
    for key, value in losses_ref.items():
        torch.testing.assert_close(losses[key], value, rtol=1e-4, atol=1e-6)
    # gradients: against the same model in float64, Winograd is as close as the direct float32 convs
    # (measured on FCOS: worst parameter 2.6e-4 against 1.1e-2 direct, median 1.3e-6 / 2.2e-6)
    ref64 = copy.deepcopy(ref).double()
    targets64 = []
    for t in targets:
        b = BoxList(t.bbox.double(), t.size)
        b.add_field("labels", t.get_field("labels"))
        targets64.append(b)
    sum(ref64(to_image_list([i.double() for i in images.tensors], 32), targets64).values()).backward()
    sum(losses_ref.values()).backward()
    sum(losses.values()).backward()
    params, params32 = dict(model.named_parameters()), dict(ref.named_parameters())
    errors = []
    for name, p in ref64.named_parameters():
        if p.grad is None:
            continue
        scale = p.grad.abs().max().clamp_min(1e-12)
        err_wino = ((params[name].grad.double() - p.grad).abs().max() / scale).item()
        err_direct = ((params32[name].grad.double() - p.grad).abs().max() / scale).item()
        assert err_wino <= 10 * err_direct + 1e-3, name
        errors.append(err_wino)
    assert len(errors) > 20 and sorted(errors)[len(errors) // 2] < 1e-4
    ref.eval()
    model.eval()
    with torch.no_grad():
        det_ref, det = ref(images), model(images)
    for a, b in zip(det_ref, det):
        # near-equal scores of the random model may swap places: match each detection to one of the
        # reference with the same label, IoU > 0.999 and a score within 1e-4
        assert len(a) > 50 and abs(len(a) - len(b)) <= len(a) // 100
        iou = box_iou(b.bbox, a.bbox)
        same = (b.get_field("labels")[:, None] == a.get_field("labels")[None]) & (iou > 0.999)
        close = (b.get_field("scores")[:, None] - a.get_field("scores")[None]).abs() < 1e-4
        assert (same & close).any(1).float().mean() >= 0.99


def test_runs_under_inference_mode():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 12, 20, generator=g)
    w = torch.randn(8, 16, 3, 3, generator=g)
    with torch.inference_mode():
        y = winograd_conv2d(x, w)
    assert _rel(y, F.conv2d(x.double(), w.double(), padding=1)) < TOL


def test_opcheck_fake_kernels():
    """Schemas and fake kernels of the three transforms (torch.library.opcheck; they have no autograd
    formula of their own: winograd_conv2d's autograd.Function differentiates through them)."""
    BT, _, AT = winograd.transform_matrices()
    x = torch.randn(2, 5, 9, 7)
    tests = ("test_schema", "test_faketensor")
    torch.library.opcheck(OPS.winograd_input_transform.default, (x, BT), test_utils=tests)
    torch.library.opcheck(OPS.winograd_input_transform.default,
                          (x.to(memory_format=torch.channels_last), BT), test_utils=tests)
    M = torch.randn(36, 2 * 3 * 2, 4)
    torch.library.opcheck(OPS.winograd_output_transform.default, (M, AT, torch.randn(4), 2, 9, 7), test_utils=tests)
    torch.library.opcheck(OPS.winograd_output_transform.default, (M, AT, None, 2, 9, 7), test_utils=tests)
    torch.library.opcheck(OPS.winograd_output_transform_backward.default, (torch.randn(2, 4, 9, 7), AT),
                          test_utils=tests)
