"""The ``*_dcnv2_*`` configs build with real weights and train: one SGD step on the CPU gives finite
losses, moves the deformable layers' offset convs (zero at init) and changes the detections."""
from pathlib import Path

import pytest
import torch

from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.layers import DFConv2d
from maskrcnn_benchmark.modeling.dense_heads import set_num_classes
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.solver import make_optimizer
from maskrcnn_benchmark.structures.bounding_box import BoxList

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["atss/atss_dcnv2_R_50_FPN_1x.yaml",
                                  "dynamic_atss/dynamic_atss_dcnv2_R_50_FPN_1x.yaml"])
def test_dcnv2_config_trains_one_step(name):
    torch.manual_seed(0)
    cfg = default_cfg.clone()
    cfg.merge_from_file(str(ROOT / "configs" / name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHT", "", "SOLVER.BASE_LR", 0.01])
    set_num_classes(cfg, 4)
    model = build_detection_model(cfg)
    dcn = [m for m in model.modules() if isinstance(m, DFConv2d)]
    # c3-c5 of ResNet-50 (4 + 6 + 3 blocks) and the last conv of each head tower
    assert len(dcn) == 13 + 2
    image = torch.randn(3, 96, 128) * 50
    target = BoxList(torch.tensor([[8.0, 10.0, 70.0, 80.0], [50.0, 30.0, 120.0, 90.0]]), (128, 96))
    target.add_field("labels", torch.tensor([1, 3]))
    optimizer = make_optimizer(cfg, model)
    model.train()
    losses = model([image], [target])
    assert all(torch.isfinite(v) for v in losses.values()), losses
    optimizer.zero_grad()
    sum(losses.values()).backward()
    grads = [m.offset.weight.grad for m in dcn]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0  # the offsets learn
    before = [m.offset.weight.detach().clone() for m in dcn]
    optimizer.step()
    assert any(not torch.equal(b, m.offset.weight) for b, m in zip(before, dcn))
