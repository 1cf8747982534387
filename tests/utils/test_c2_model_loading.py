"""Pretrained-weight conversion (Detectron/caffe2 .pkl, torchvision state dicts) and
longest-suffix loading into our backbones."""
import pickle
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn_benchmark.config import cfg as _default_cfg
from maskrcnn_benchmark.modeling.backbone import build_backbone, build_resnet_body
from maskrcnn_benchmark.utils.c2_model_loading import (
    convert_torchvision_resnet_weights, load_c2_format, rename_basic_resnet_weights,
    rename_conv_weights_for_deformable_conv_layers, rename_fpn_weights)
from maskrcnn_benchmark.utils.checkpoint import load_pretrained_weights
from maskrcnn_benchmark.utils.model_serialization import (
    align_and_update_state_dicts, load_state_dict_flexible)


def make_cfg(conv_body, **resnets):
    cfg = _default_cfg.clone()
    cfg.MODEL.BACKBONE.CONV_BODY = conv_body
    cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT = 0
    cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 256
    cfg.MODEL.RETINANET.USE_C5 = True
    if conv_body.startswith(("R-18", "R-34")):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    for key, value in resnets.items():
        cfg.MODEL.RESNETS[key] = value
    return cfg


def test_rename_basic_resnet_weights_by_hand():
    names = ["conv1_w", "res_conv1_bn_s", "res_conv1_bn_b", "res2_0_branch1_w", "res2_0_branch1_bn_s",
             "res2_0_branch2a_w", "res2_0_branch2a_bn_b", "res3_3_branch2b_w", "res4_22_branch2c_bn_s",
             "res5_2_branch2c_w", "conv1_gn_s", "res3_0_branch2b_gn_b", "res2_1_branch2a_bn_rm",
             "res2_1_branch2a_bn_riv", "fc1000_w", "pred_w"]
    assert rename_basic_resnet_weights(names) == [
        "stem.conv1.weight", "stem.bn1.weight", "stem.bn1.bias", "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.weight", "layer1.0.conv1.weight", "layer1.0.bn1.bias",
        "layer2.3.conv2.weight", "layer3.22.bn3.weight", "layer4.2.conv3.weight", "stem.bn1.weight",
        "layer2.0.bn2.bias", "layer1.1.bn1.running_mean", "layer1.1.bn1.running_var", "fc.weight",
        "pred_w"]


def test_rename_fpn_weights_by_hand():
    names = ["fpn_inner_res5_2_sum_w", "fpn_inner_res4_5_sum_lateral_b", "fpn_res3_3_sum_w",
             "fpn_6_w", "fpn_7_b", "res2_0_branch2a_w"]
    assert rename_fpn_weights(names) == [
        "fpn.fpn_inner4.weight", "fpn.fpn_inner3.bias", "fpn.fpn_layer2.weight",
        "fpn.top_blocks.p6.weight", "fpn.top_blocks.p7.bias", "res2_0_branch2a_w"]
    gn = ["fpn_inner_res5_2_sum_w", "fpn_inner_res5_2_sum_gn_s", "fpn_inner_res5_2_sum_gn_b"]
    assert rename_fpn_weights(gn) == ["fpn.fpn_inner4.0.weight", "fpn.fpn_inner4.1.weight",
                                      "fpn.fpn_inner4.1.bias"]


def to_c2_name(key):
    """Our name (without "body."/"fpn." owner) -> Detectron blob name; the inverse, by hand."""
    param = {"weight": "w", "bias": "b"}
    m = re.fullmatch(r"stem\.conv1\.(weight)", key)
    if m:
        return "conv1_w"
    m = re.fullmatch(r"stem\.bn1\.(weight|bias)", key)
    if m:
        return "res_conv1_bn_" + {"weight": "s", "bias": "b"}[m.group(1)]
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|downsample\.0)\.weight", key)
    if m:
        branch = {"conv1": "2a", "conv2": "2b", "conv3": "2c", "downsample.0": "1"}[m.group(3)]
        return f"res{int(m.group(1)) + 1}_{m.group(2)}_branch{branch}_w"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(bn\d|downsample\.1)\.(weight|bias)", key)
    if m:
        branch = {"bn1": "2a", "bn2": "2b", "bn3": "2c", "downsample.1": "1"}[m.group(3)]
        return f"res{int(m.group(1)) + 1}_{m.group(2)}_branch{branch}_bn_" + \
            {"weight": "s", "bias": "b"}[m.group(4)]
    m = re.fullmatch(r"fpn_inner(\d)\.(weight|bias)", key)
    if m:
        lateral = "" if m.group(1) == "4" else "_lateral"
        return f"fpn_inner_res{int(m.group(1)) + 1}_0_sum{lateral}_{param[m.group(2)]}"
    m = re.fullmatch(r"fpn_layer(\d)\.(weight|bias)", key)
    if m:
        return f"fpn_res{int(m.group(1)) + 1}_0_sum_{param[m.group(2)]}"
    m = re.fullmatch(r"top_blocks\.p(\d)\.(weight|bias)", key)
    return f"fpn_{m.group(1)}_{param[m.group(2)]}"


def test_load_fake_c2_pickle_into_r50_fpn(tmp_path):
    model = build_backbone(make_cfg("R-50-FPN-RETINANET"))
    rng = np.random.RandomState(0)
    expected, blobs = {}, {}
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            continue  # caffe2 ImageNet weights have no BN statistics
        local = key.split(".", 1)[1]
        blob = rng.randn(*value.shape).astype(np.float32)
        blobs[to_c2_name(local)] = blob
        expected[key] = torch.from_numpy(blob)
    blobs["fc1000_w"] = rng.randn(1000, 2048).astype(np.float32)
    blobs["conv1_w_momentum"] = rng.randn(64, 3, 7, 7).astype(np.float32)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)

    state = load_pretrained_weights(str(path))
    assert "fc.weight" not in state and not any("momentum" in k for k in state)
    report = load_state_dict_flexible(model, state)
    assert report.unused == []
    assert sorted(report.missing) == sorted(k for k in model.state_dict() if k.endswith(("_mean", "_var")))
    loaded = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    assert torch.equal(loaded["body.layer4.2.bn3.running_var"], torch.ones(2048))
    # maskrcnn-benchmark's entry point gives the same dict
    assert load_c2_format(make_cfg("R-50-FPN-RETINANET"), str(path))["model"].keys() == state.keys()


class RefBasic(nn.Module):
    """torchvision's BasicBlock, written out with nn.BatchNorm2d."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + idt)


class RefBottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3), written out with nn.BatchNorm2d."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        mid = cout // 4
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + idt)


class RefResNet(nn.Module):
    """torchvision ResNet layout (conv1, bn1, layer1..4, fc) returning C2..C5."""

    def __init__(self, block, blocks, widths):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (n, w) in enumerate(zip(blocks, widths), 1):
            layers = [block(cin if j == 0 else w, w, (1 if i == 1 else 2) if j == 0 else 1)
                      for j in range(n)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))
            cin = w
        self.fc = nn.Linear(cin, 1000)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_reproduce_reference_outputs(tmp_path, depth):
    torch.manual_seed(depth)
    if depth == 18:
        ref = RefResNet(RefBasic, (2, 2, 2, 2), (64, 128, 256, 512))
    else:
        ref = RefResNet(RefBottleneck, (3, 4, 6, 3), (256, 512, 1024, 2048))
    for m in ref.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(100)
    ref.eval()
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(ref.state_dict(), path)

    body = build_resnet_body(make_cfg(f"R-{depth}-FPN-RETINANET", STRIDE_IN_1X1=False), (1, 2, 3, 4))
    state = load_pretrained_weights(str(path))
    assert "stem.conv1.weight" in state and not any(k.startswith("fc.") for k in state)
    report = load_state_dict_flexible(body, state)
    assert report.missing == [] and report.unused == []
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(body(x), ref(x)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_torchvision_conversion_details():
    sd = OrderedDict([("module.conv1.weight", torch.zeros(1)), ("module.bn1.running_var", torch.ones(2)),
                      ("module.bn1.num_batches_tracked", torch.tensor(3)),
                      ("module.layer2.0.conv2.weight", torch.zeros(1)),
                      ("module.fc.weight", torch.zeros(1)), ("module.fc.bias", torch.zeros(1))])
    out = convert_torchvision_resnet_weights(sd, bn_eps=0.5, stage_with_dcn=(False, True, False, False))
    assert list(out) == ["stem.conv1.weight", "stem.bn1.running_var", "layer2.0.conv2.conv.weight"]
    assert torch.equal(out["stem.bn1.running_var"], torch.full((2,), 1.5))


def test_rename_for_deformable_conv_layers():
    sd = OrderedDict((k, torch.zeros(1)) for k in [
        "layer1.0.conv2.weight", "layer3.4.conv2.weight", "body.layer4.0.conv2.weight",
        "layer3.4.conv1.weight", "layer4.1.bn2.weight"])
    out = rename_conv_weights_for_deformable_conv_layers(sd, (False, False, True, True))
    assert list(out) == ["layer1.0.conv2.weight", "layer3.4.conv2.conv.weight",
                         "body.layer4.0.conv2.conv.weight", "layer3.4.conv1.weight",
                         "layer4.1.bn2.weight"]


def test_own_checkpoint_loads_unchanged(tmp_path):
    model = build_backbone(make_cfg("R-18-FPN-RETINANET"))
    path = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 7}, path)
    state = load_pretrained_weights(str(path))
    assert list(state) == list(model.state_dict())


def test_align_longest_dot_suffix():
    model_sd = OrderedDict([("body.stem.conv1.weight", torch.zeros(2)),
                            ("body.layer1.0.conv1.weight", torch.zeros(3)),
                            ("head.xconv1.weight", torch.zeros(2)),
                            ("head.cls.bias", torch.zeros(1))])
    loaded = {"conv1.weight": torch.ones(2), "layer1.0.conv1.weight": torch.full((3,), 2.0),
              "unused.key": torch.ones(1)}
    report = align_and_update_state_dicts(model_sd, loaded)
    assert report.matched == {"body.stem.conv1.weight": "conv1.weight",
                              "body.layer1.0.conv1.weight": "layer1.0.conv1.weight"}
    assert report.missing == ["head.cls.bias", "head.xconv1.weight"]
    assert report.unused == ["unused.key"]
    assert torch.equal(model_sd["body.layer1.0.conv1.weight"], torch.full((3,), 2.0))
    assert torch.equal(model_sd["head.xconv1.weight"], torch.zeros(2))


def test_shape_mismatch_error_names_key_and_shapes():
    model = nn.Sequential(OrderedDict(body=nn.Conv2d(3, 4, 3)))
    with pytest.raises(ValueError) as info:
        load_state_dict_flexible(model, {"module.body.weight": torch.zeros(4, 3, 5, 5)})
    msg = str(info.value)
    assert "body.weight" in msg and "(4, 3, 3, 3)" in msg and "(4, 3, 5, 5)" in msg


# ---- restricted unpickling of .pkl weights -----------------------------------------------------------
class _RunsCode:
    """Pickles as a call of os.system (what a crafted weight file does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


class _CustomClass:
    pass


def test_pkl_with_code_is_refused_and_not_run(tmp_path):
    from maskrcnn_benchmark.utils.c2_model_loading import UnsafePickleError, load_c2_pickled_weights

    marker = tmp_path / "executed"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.zeros((1,), np.float32), "x": _RunsCode(marker)}}, f, protocol=2)
    with pytest.raises(UnsafePickleError) as e:
        load_pretrained_weights(str(path))
    assert "evil.pkl" in str(e.value) and "system" in str(e.value)
    assert not marker.exists()
    with open(path, "wb") as f:
        pickle.dump({"conv1_w": _CustomClass()}, f)
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*_CustomClass"):
        load_c2_pickled_weights(str(path))


def test_pkl_python2_numpy1_layout_loads(tmp_path):
    """Original Detectron files are python-2 pickles naming numpy.core.multiarray (numpy 1.x), with a
    "blobs" dict and other entries next to it; numpy scalars and bytes may appear too."""
    from maskrcnn_benchmark.utils.c2_model_loading import load_c2_pickled_weights

    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = pickle.dumps({"blobs": OrderedDict([("conv1_w", w), ("conv1_b", np.float32(2.5))]),
                        "cfg": "MODEL: {}", "raw": b"\x00\xff"}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    path = tmp_path / "R-50.pkl"
    path.write_bytes(raw)
    blobs = load_c2_pickled_weights(str(path))
    assert sorted(blobs) == ["conv1_b", "conv1_w"]
    np.testing.assert_array_equal(blobs["conv1_w"], w)
    assert float(blobs["conv1_b"]) == 2.5


def test_pkl_not_a_pickle_is_clear_error(tmp_path):
    path = tmp_path / "empty.pkl"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pkl"):
        load_pretrained_weights(str(path))
