"""FLOP counting: torch's conv formula, this project's op formulas, and the analyze_model tool."""
import importlib.util
import os

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from maskrcnn_benchmark.layers import ModulatedDeformConv, batched_nms, box_iou, nms, sigmoid_focal_loss
from maskrcnn_benchmark.utils.flop_count import count_flops, count_parameters, nms_flops, register_flop_formulas

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPS = torch.ops.maskrcnn_benchmark


def _by_op(counts):
    return {str(op): n for op, n in counts["Global"].items()}


def test_conv_layer_by_hand():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    total, counts = count_flops(conv, torch.randn(2, 3, 17, 15))
    # output [2, 8, 9, 8]; each output value: 3 * 3 * 3 multiply-adds = 54 FLOPs
    assert total == 2 * 8 * 9 * 8 * 54 == 62208
    assert _by_op(counts) == {"aten.convolution": 62208}


def _dcn_inputs():
    layer = ModulatedDeformConv(4, 6, 3, stride=1, padding=1, groups=2, deformable_groups=2)
    x = torch.randn(1, 4, 5, 6)
    offset = torch.randn(1, 2 * 2 * 9, 5, 6)
    mask = torch.rand(1, 2 * 9, 5, 6)
    return layer, x, offset, mask


def test_deform_conv_by_hand():
    layer, x, offset, mask = _dcn_inputs()
    total, counts = count_flops(layer, x, offset, mask)
    # output [1, 6, 5, 6] = 180 values, each 2 input channels (groups 2) x 9 taps multiply-adds: 180 * 36
    conv = 180 * 2 * 9 * 2
    # sampling: 1 image x 4 input channels x 9 taps x 30 positions, 8 FLOPs each (bilinear 7 + mask 1)
    sampling = 4 * 9 * 30 * 8
    assert (conv, sampling) == (6480, 8640)
    assert total == conv + sampling and _by_op(counts) == {"maskrcnn_benchmark.deform_conv2d": 15120}


def test_deform_conv_backward_counts_twice_the_forward():
    register_flop_formulas()
    layer, x, offset, mask = _dcn_inputs()
    x.requires_grad_()
    with FlopCounterMode(display=False) as counter:
        layer(x, offset, mask).sum().backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts["maskrcnn_benchmark.deform_conv2d"] == 15120
    assert counts["maskrcnn_benchmark._deform_conv2d_backward"] == 2 * 15120


def test_post_processing_ops_by_hand():
    register_flop_formulas()
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 5, 5], [2, 2, 8, 9],
                          [3, 0, 9, 4]], dtype=torch.float32)
    scores = torch.linspace(0.9, 0.4, 6)
    with FlopCounterMode(display=False) as counter:
        box_iou(boxes[:5], boxes)
        nms(boxes, scores, 0.5)
        batched_nms(boxes, scores, torch.tensor([0, 0, 1, 1, 2, 2]), 0.5)
        sigmoid_focal_loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), 2.0, 0.25)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts["maskrcnn_benchmark.box_iou"] == 12 * 5 * 6 + 3 * (5 + 6)  # 396
    assert counts["maskrcnn_benchmark.nms"] == 12 * 15 + 3 * 6  # all 15 pairs of 6 boxes: 198
    assert counts["maskrcnn_benchmark.batched_nms"] == 198 + 4 * 6
    assert counts["maskrcnn_benchmark.sigmoid_focal_loss"] == 12 * 4 * 3


def test_count_parameters_names_and_depth():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Linear(4, 2)))
    model[0].bias.requires_grad_(False)
    params = count_parameters(model, depth=1)
    assert params == {"Sequential": (112 + 10, 108 + 10), "Sequential.0": (112, 108), "Sequential.1": (10, 10)}


def _tool():
    spec = importlib.util.spec_from_file_location("tools_analyze_model", os.path.join(ROOT, "tools", "analyze_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_analyze_model_equals_per_layer_hand_count(capsys):
    """The tool's total = every Conv2d (2 x output values x C/g x kh x kw) + the DCN formula, counted by
    forward hooks; its parameter count = the model's."""
    config = os.path.join(ROOT, "configs", "atss", "atss_R_18_FPN_synthetic.yaml")
    opts = ["MODEL.DEVICE", "cpu", "MODEL.ATSS.USE_DCN_IN_TOWER", "True", "MODEL.ATSS.INFERENCE_TH", "1.1"]
    tool = _tool()
    result = tool.main(["--config-file", config, "--height", "64", "--width", "96", "--depth", "2", *opts])
    out = capsys.readouterr().out
    assert "GeneralizedRCNN" in out and "maskrcnn_benchmark.deform_conv2d" in out

    from maskrcnn_benchmark.config import setup_cfg

    model, _ = tool.build_model(setup_cfg(config, opts))
    with torch.no_grad():  # every candidate slot (masked or not) goes through the batch's one NMS
        slots = model.candidates(torch.randn(1, 3, 64, 96)).scores.numel()
    hand = []

    def conv_hook(m, inputs, output):
        hand.append(2 * output.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1])

    def dcn_hook(m, inputs, output):
        b, c = inputs[0].shape[:2]
        kh, kw = m.kernel_size
        taps = b * c * kh * kw * output.shape[2] * output.shape[3]
        hand.append(2 * output.numel() * (m.in_channels // m.groups) * kh * kw + 8 * taps)

    num_dcn = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, ModulatedDeformConv):
            m.register_forward_hook(dcn_hook)
            num_dcn += 1
    assert num_dcn == 2
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    assert result["total_flops"] == sum(hand) + nms_flops(slots) + 4 * slots  # batched_nms formula
    by_op = {str(op): n for op, n in result["by_op"]}
    assert by_op["maskrcnn_benchmark.deform_conv2d"] > 0
    assert result["params"]["GeneralizedRCNN"][0] == sum(p.numel() for p in model.parameters())
