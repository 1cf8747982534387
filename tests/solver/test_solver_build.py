"""Optimizer parameter groups: bias lr x BIAS_LR_FACTOR, bias / norm weight decay."""
import pytest
import torch
from torch import nn

from maskrcnn_benchmark.config import cfg as base_cfg
from maskrcnn_benchmark.solver import get_param_groups, make_lr_scheduler, make_optimizer


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gn = nn.GroupNorm(2, 4)
        self.frozen = nn.Conv2d(4, 4, 1)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self.fc = nn.Linear(4, 2, bias=False)


def _by_name(groups):
    return {g["name"]: g for g in groups}


def _cfg(**solver):
    cfg = base_cfg.clone()
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    return cfg


def test_groups_match_hand_rules():
    groups = _by_name(get_param_groups(Tiny(), base_lr=0.01, weight_decay=1e-4, bias_lr_factor=2,
                                       weight_decay_bias=0.0, weight_decay_norm=-1))
    assert set(groups) == {"conv.weight", "conv.bias", "gn.weight", "gn.bias", "fc.weight"}
    assert groups["conv.weight"]["lr"] == 0.01 and groups["conv.weight"]["weight_decay"] == 1e-4
    assert groups["conv.bias"]["lr"] == pytest.approx(0.02) and groups["conv.bias"]["weight_decay"] == 0.0
    assert groups["gn.weight"]["weight_decay"] == 1e-4  # WEIGHT_DECAY_NORM < 0: same as weights
    assert groups["gn.bias"]["lr"] == pytest.approx(0.02) and groups["gn.bias"]["weight_decay"] == 0.0


def test_norm_weight_decay():
    groups = _by_name(get_param_groups(Tiny(), 0.01, 1e-4, 2, 0.0, weight_decay_norm=0.0))
    assert groups["gn.weight"]["weight_decay"] == 0.0
    assert groups["conv.weight"]["weight_decay"] == 1e-4


def test_make_optimizer_from_cfg_and_step():
    cfg = _cfg(BASE_LR=0.1, BIAS_LR_FACTOR=2.0, WEIGHT_DECAY=0.5, WEIGHT_DECAY_BIAS=0.0, MOMENTUM=0.0)
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(1.0)
    opt = make_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD)
    model(torch.zeros(1, 1)).sum().backward()  # d/dw = 0, d/db = 1
    opt.step()
    # weight: w - lr * wd * w = 1 - 0.1 * 0.5; bias: b - 2 * lr * 1 (no decay)
    assert model.weight.item() == pytest.approx(1 - 0.05)
    assert model.bias.item() == pytest.approx(1 - 0.2)


def test_make_lr_scheduler_from_cfg():
    cfg = _cfg(BASE_LR=0.1, STEPS=(2,), GAMMA=0.1, WARMUP_ITERS=1, WARMUP_FACTOR=0.5, WARMUP_METHOD="constant")
    opt = make_optimizer(cfg, nn.Linear(1, 1, bias=False))
    sched = make_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05, 0.1, 0.01])


def test_make_lr_scheduler_rejects_bad_steps():
    cfg = _cfg(STEPS=(100, 50))
    with pytest.raises(ValueError, match="STEPS"):
        make_lr_scheduler(cfg, make_optimizer(cfg, nn.Linear(1, 1)))


def test_dcn_offset_lr_factor_from_cfg():
    """SOLVER.DCONV_OFFSETS_LR_FACTOR multiplies the lr of the DCN offset convs (DFConv2d.offset,
    names ending in .offset.weight / .offset.bias; the bias also gets BIAS_LR_FACTOR), nothing else."""
    from maskrcnn_benchmark.layers.dcn import DFConv2d

    class WithDCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = nn.Sequential(DFConv2d(4, 4, kernel_size=3), nn.Conv2d(4, 4, 1))
            self.offset_like = nn.Conv2d(4, 4, 1)  # "offset_like.weight": not an offset conv

    cfg = _cfg(BASE_LR=0.01, BIAS_LR_FACTOR=2.0, DCONV_OFFSETS_LR_FACTOR=0.1)
    opt = make_optimizer(cfg, WithDCN())
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["tower.0.offset.weight"] == pytest.approx(0.01 * 0.1)
    assert lrs["tower.0.offset.bias"] == pytest.approx(0.01 * 2.0 * 0.1)
    assert lrs["tower.0.conv.weight"] == pytest.approx(0.01)
    assert lrs["tower.1.weight"] == pytest.approx(0.01) and lrs["offset_like.weight"] == pytest.approx(0.01)
    default = {g["name"]: g["lr"] for g in make_optimizer(_cfg(BASE_LR=0.01), WithDCN()).param_groups}
    assert default["tower.0.offset.weight"] == pytest.approx(0.01)  # factor 1.0 by default
