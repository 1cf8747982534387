"""mmdetection checkpoints through MODEL.WEIGHT: the name map (utils/mmdet_model_loading.py) loads a
state dict with mmdetection's exact key names and shapes into the ``*_mmdet.yaml`` models with no
missing or unexpected key, and puts each tensor in its place.

The mmdetection state dicts are written out here from mmdetection 3.3's model definitions
(``ResNet`` / ``Bottleneck``, ``FPN`` with ``ConvModule`` ``.conv`` / ``.gn``, ``RetinaHead`` /
``FreeAnchorRetinaHead``, ``ATSSHead``, ``AutoAssignHead``, ``GFLHead``), not from this project's modules.
"""
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from maskrcnn_benchmark.config import setup_cfg
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.utils.checkpoint import load_pretrained_weights
from maskrcnn_benchmark.utils.mmdet_model_loading import convert_mmdet_weights, is_mmdet_state_dict
from maskrcnn_benchmark.utils.model_serialization import load_state_dict_flexible

ROOT = Path(__file__).resolve().parents[2]
NUM_FG = 3  # foreground classes (mmdetection num_classes); NUM_CLASSES here = NUM_FG + 1


def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def mmdet_resnet50():
    """mmdet.models.backbones.ResNet(depth=50): stem conv1/bn1, layer1-4 of Bottlenecks (3, 4, 6, 3),
    expansion 4, downsample.0 (1x1 conv) / downsample.1 (BN) in the first block of each stage."""
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    inplanes = 64
    for stage, blocks in enumerate((3, 4, 6, 3)):
        planes = 64 * 2 ** stage
        for j in range(blocks):
            p = f"layer{stage + 1}.{j}"
            cin = inplanes if j == 0 else planes * 4
            shapes.update({f"{p}.conv1.weight": (planes, cin, 1, 1), **_bn(f"{p}.bn1", planes),
                           f"{p}.conv2.weight": (planes, planes, 3, 3), **_bn(f"{p}.bn2", planes),
                           f"{p}.conv3.weight": (planes * 4, planes, 1, 1), **_bn(f"{p}.bn3", planes * 4)})
            if j == 0:
                shapes.update({f"{p}.downsample.0.weight": (planes * 4, inplanes, 1, 1),
                               **_bn(f"{p}.downsample.1", planes * 4)})
        inplanes = planes * 4
    return {"backbone." + k: v for k, v in shapes.items()}


def mmdet_fpn(extra_on_input):
    """mmdet.models.necks.FPN(in_channels=[256, 512, 1024, 2048], out_channels=256, start_level=1,
    num_outs=5): lateral_convs.{0..2} (1x1), fpn_convs.{0..2} (3x3), extra fpn_convs.3 (on the input
    C5: 2048 channels, or on the output P5: 256) and fpn_convs.4; ConvModule(.conv, bias)."""
    shapes = {}
    for i, cin in enumerate((512, 1024, 2048)):
        shapes.update({f"neck.lateral_convs.{i}.conv.weight": (256, cin, 1, 1), f"neck.lateral_convs.{i}.conv.bias": (256,),
                       f"neck.fpn_convs.{i}.conv.weight": (256, 256, 3, 3), f"neck.fpn_convs.{i}.conv.bias": (256,)})
    shapes.update({"neck.fpn_convs.3.conv.weight": (256, 2048 if extra_on_input else 256, 3, 3),
                   "neck.fpn_convs.3.conv.bias": (256,),
                   "neck.fpn_convs.4.conv.weight": (256, 256, 3, 3), "neck.fpn_convs.4.conv.bias": (256,)})
    return shapes


def _towers(conv_bias, gn):
    shapes = {}
    for tower in ("cls_convs", "reg_convs"):
        for i in range(4):
            shapes[f"bbox_head.{tower}.{i}.conv.weight"] = (256, 256, 3, 3)
            if conv_bias:
                shapes[f"bbox_head.{tower}.{i}.conv.bias"] = (256,)
            if gn:
                shapes.update({f"bbox_head.{tower}.{i}.gn.weight": (256,), f"bbox_head.{tower}.{i}.gn.bias": (256,)})
    return shapes


def mmdet_free_anchor_head():
    """FreeAnchorRetinaHead (RetinaHead): 4 x ConvModule(conv + bias, no norm) per tower, retina_cls
    (9 anchors x num_classes), retina_reg (9 x 4)."""
    a = 9
    return {**_towers(True, False), "bbox_head.retina_cls.weight": (a * NUM_FG, 256, 3, 3),
            "bbox_head.retina_cls.bias": (a * NUM_FG,), "bbox_head.retina_reg.weight": (a * 4, 256, 3, 3),
            "bbox_head.retina_reg.bias": (a * 4,)}


def _scales():
    return {f"bbox_head.scales.{i}.scale": () for i in range(5)}  # mmcv Scale: a 0-d parameter


def mmdet_atss_head():
    """ATSSHead: 4 x ConvModule(conv without bias, GN) per tower, atss_cls / atss_reg /
    atss_centerness (1 anchor), one Scale per level."""
    return {**_towers(False, True), "bbox_head.atss_cls.weight": (NUM_FG, 256, 3, 3), "bbox_head.atss_cls.bias": (NUM_FG,),
            "bbox_head.atss_reg.weight": (4, 256, 3, 3), "bbox_head.atss_reg.bias": (4,),
            "bbox_head.atss_centerness.weight": (1, 256, 3, 3), "bbox_head.atss_centerness.bias": (1,), **_scales()}


def mmdet_autoassign_head():
    """AutoAssignHead (FCOSHead, conv_bias True, GN): conv_cls / conv_reg / conv_centerness (the
    objectness), one Scale per level, center_prior.mean / sigma (num_classes x 2)."""
    return {**_towers(True, True), "bbox_head.conv_cls.weight": (NUM_FG, 256, 3, 3), "bbox_head.conv_cls.bias": (NUM_FG,),
            "bbox_head.conv_reg.weight": (4, 256, 3, 3), "bbox_head.conv_reg.bias": (4,),
            "bbox_head.conv_centerness.weight": (1, 256, 3, 3), "bbox_head.conv_centerness.bias": (1,), **_scales(),
            "bbox_head.center_prior.mean": (NUM_FG, 2), "bbox_head.center_prior.sigma": (NUM_FG, 2)}


REG_MAX = 16  # mmdetection GFLHead's default (gfl_r50_fpn_1x_coco)


def mmdet_gfl_head():
    """GFLHead (AnchorHead, 1 anchor): 4 x ConvModule(conv without bias, GN) per tower, gfl_cls
    (num_classes), gfl_reg (4 x (reg_max + 1): per side reg_max + 1 bins, side-major), one Scale
    per level, and the ``Integral`` buffer ``integral.project`` = linspace(0, reg_max, reg_max + 1)."""
    bins = 4 * (REG_MAX + 1)
    return {**_towers(False, True), "bbox_head.gfl_cls.weight": (NUM_FG, 256, 3, 3), "bbox_head.gfl_cls.bias": (NUM_FG,),
            "bbox_head.gfl_reg.weight": (bins, 256, 3, 3), "bbox_head.gfl_reg.bias": (bins,), **_scales(),
            "bbox_head.integral.project": (REG_MAX + 1,)}


CASES = {
    "free_anchor": ("configs/free_anchor/free_anchor_R_50_FPN_1x_mmdet.yaml", "RETINANET", True, mmdet_free_anchor_head),
    "atss": ("configs/atss/atss_R_50_FPN_1x_mmdet.yaml", "ATSS", False, mmdet_atss_head),
    "autoassign": ("configs/autoassign/autoassign_R_50_FPN_1x_mmdet.yaml", "AUTOASSIGN", True, mmdet_autoassign_head),
    # GFL's own config has mmdetection's conventions (gfl_r50_fpn_1x_coco: FPN extra convs on the output)
    "gfl": ("configs/gfl/gfl_R_50_FPN_1x.yaml", "GFL", False, mmdet_gfl_head),
}


def _mmdet_state_dict(name):
    _, _, on_input, head = CASES[name]
    shapes = {**mmdet_resnet50(), **mmdet_fpn(on_input), **head()}
    g = torch.Generator().manual_seed(0)
    sd = OrderedDict()
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1000, dtype=torch.int64)
        elif k.endswith("integral.project"):  # a constant buffer of mmdetection's Integral
            sd[k] = torch.linspace(0, shape[0] - 1, shape[0])
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g)
    return sd


def _model(name):
    path, node, _, _ = CASES[name]
    cfg = setup_cfg(str(ROOT / path), ["MODEL.DEVICE", "cpu", f"MODEL.{node}.NUM_CLASSES", NUM_FG + 1])
    return build_detection_model(cfg)


@pytest.mark.parametrize("name", sorted(CASES))
def test_mmdet_checkpoint_loads_completely(tmp_path, name):
    mm = _mmdet_state_dict(name)
    assert is_mmdet_state_dict(mm)
    path = tmp_path / "mmdet.pth"
    torch.save({"meta": {"mmdet_version": "3.3.0", "dataset_meta": {"classes": ("a", "b", "c")}},
                "state_dict": mm}, str(path))
    converted = load_pretrained_weights(str(path))  # what MODEL.WEIGHT reads
    model = _model(name)
    report = load_state_dict_flexible(model, converted)
    assert report.missing == [] and report.unused == []
    # every mmdetection tensor but the BN counters (and GFL's constant Integral bins) is used exactly once
    dropped = sum(k.endswith(("num_batches_tracked", "integral.project")) for k in mm)
    assert len(set(report.matched.values())) == len(mm) - dropped
    sd = model.state_dict()
    head = "rpn.head."
    torch.testing.assert_close(sd["backbone.body.stem.conv1.weight"], mm["backbone.conv1.weight"])
    torch.testing.assert_close(sd["backbone.body.layer3.5.bn2.running_var"],
                               mm["backbone.layer3.5.bn2.running_var"] + 1e-5)  # mmdet BN eps folded
    torch.testing.assert_close(sd["backbone.fpn.fpn_inner2.weight"], mm["neck.lateral_convs.0.conv.weight"])
    torch.testing.assert_close(sd["backbone.fpn.fpn_layer4.bias"], mm["neck.fpn_convs.2.conv.bias"])
    torch.testing.assert_close(sd["backbone.fpn.top_blocks.p6.weight"], mm["neck.fpn_convs.3.conv.weight"])
    torch.testing.assert_close(sd["backbone.fpn.top_blocks.p7.weight"], mm["neck.fpn_convs.4.conv.weight"])
    prefix = {"free_anchor": "retina", "atss": "atss", "autoassign": "conv", "gfl": "gfl"}[name]
    torch.testing.assert_close(sd[head + "cls_logits.weight"], mm[f"bbox_head.{prefix}_cls.weight"])  # same channels
    torch.testing.assert_close(sd[head + "bbox_pred.bias"], mm[f"bbox_head.{prefix}_reg.bias"])  # GFL: 68 bins
    per = 2 if name == "free_anchor" else 3
    torch.testing.assert_close(sd[head + f"bbox_tower.{3 * per}.weight"], mm["bbox_head.reg_convs.3.conv.weight"])
    if name != "free_anchor":
        torch.testing.assert_close(sd[head + "cls_tower.7.weight"], mm["bbox_head.cls_convs.2.gn.weight"])
        torch.testing.assert_close(sd[head + "scales.4.scale"], mm["bbox_head.scales.4.scale"].reshape(1))
    if name in ("atss", "autoassign"):
        torch.testing.assert_close(sd[head + "centerness.weight"], mm[f"bbox_head.{prefix}_centerness.weight"])
    if name == "autoassign":
        torch.testing.assert_close(sd["rpn.center_prior.sigma"], mm["bbox_head.center_prior.sigma"])


def test_mmdet_gfl_checkpoint_decodes_as_mmdetection(tmp_path):
    """mmdetection's GFLHead reads ``gfl_reg`` side-major (``reshape(-1, reg_max + 1)``, then
    ``Integral``: softmax . linspace(0, reg_max)), multiplies by the stride and decodes
    ``distance2bbox(anchor centre, d)`` with anchor centres at ``x * s`` (``center_offset`` 0); its
    score is ``sigmoid(gfl_cls)``. The loaded model predicts exactly that (re-derived here from the
    raw branches)."""
    path = tmp_path / "gfl_mmdet.pth"
    torch.save({"state_dict": _mmdet_state_dict("gfl")}, str(path))
    model = _model("gfl").eval()
    load_state_dict_flexible(model, load_pretrained_weights(str(path)))
    strides, sizes = (8, 16, 32, 64, 128), ((4, 5), (2, 3), (1, 2), (1, 1), (1, 1))
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(1, 256, h, w, generator=g) for h, w in sizes]
    with torch.no_grad():
        pred = model.rpn.predict(feats)
        cls, dists = model.rpn.head(feats)
    boxes = []
    for (h, w), s, d in zip(sizes, strides, dists):
        logits = d[0].permute(1, 2, 0).reshape(-1, REG_MAX + 1)  # mmdetection's Integral
        dist = (logits.softmax(-1) @ torch.linspace(0, REG_MAX, REG_MAX + 1)).reshape(-1, 4) * s
        ys, xs = torch.meshgrid(torch.arange(h) * s, torch.arange(w) * s, indexing="ij")
        cx, cy = xs.reshape(-1).float(), ys.reshape(-1).float()
        boxes.append(torch.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], dim=-1))
    assert dists[0].shape[1] == 4 * (REG_MAX + 1)
    torch.testing.assert_close(pred.boxes[0], torch.cat(boxes), rtol=1e-5, atol=1e-3)
    scores = torch.cat([c[0].permute(1, 2, 0).reshape(-1, NUM_FG) for c in cls]).sigmoid()
    torch.testing.assert_close(pred.scores[0], scores)


def test_mmdet_gfl_integral_bins_other_than_0_to_reg_max_are_refused():
    sd = _mmdet_state_dict("gfl")
    sd["bbox_head.integral.project"] = torch.linspace(0, 1, REG_MAX + 1)  # bins this head does not use
    with pytest.raises(ValueError, match=r"bbox_head\.integral\.project \(shape \(17,\)\).*0, 1, \.\.\., reg_max"):
        convert_mmdet_weights(sd)


def test_mmdet_detection_and_unknown_names():
    ours = {"backbone.body.stem.conv1.weight": torch.zeros(1), "rpn.head.cls_logits.weight": torch.zeros(1)}
    assert not is_mmdet_state_dict(ours)
    out = convert_mmdet_weights({"backbone.conv1.weight": torch.zeros(1), "bbox_head.foo.weight": torch.zeros(1),
                                 "neck.lateral_convs.0.conv.weight": torch.zeros(1),
                                 "neck.fpn_convs.0.gn.weight": torch.zeros(1)})
    # unknown names are kept (then reported as not matching anything), known ones renamed
    assert set(out) == {"body.stem.conv1.weight", "bbox_head.foo.weight", "fpn.fpn_inner4.weight",
                        "neck.fpn_convs.0.gn.weight"}


def test_mmengine_training_checkpoint_gets_a_hint(tmp_path, monkeypatch):
    """An mmengine checkpoint whose training state holds mmengine objects is refused (weights_only)
    with a message saying how to keep its weights."""
    mmengine = types.ModuleType("mmengine")
    logging_mod = types.ModuleType("mmengine.logging")

    class HistoryBuffer:
        pass

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = "mmengine.logging", "HistoryBuffer"
    logging_mod.HistoryBuffer = HistoryBuffer
    mmengine.logging = logging_mod
    monkeypatch.setitem(sys.modules, "mmengine", mmengine)
    monkeypatch.setitem(sys.modules, "mmengine.logging", logging_mod)
    path = tmp_path / "epoch_12.pth"
    torch.save({"state_dict": _mmdet_state_dict("atss"), "message_hub": {"loss": HistoryBuffer()}}, str(path))
    with pytest.raises(ValueError, match=r"epoch_12\.pth.*mmengine training checkpoint.*state_dict"):
        load_pretrained_weights(str(path))
