"""SOLVER.REFERENCE_BATCH: the linear lr scaling rule (lr only; iterations unchanged)."""
import logging

import pytest
import torch
from torch import nn

from maskrcnn_benchmark.config import cfg as base_cfg
from maskrcnn_benchmark.solver import make_lr_scheduler, make_optimizer, scale_lr_to_batch


def _cfg(**solver):
    cfg = base_cfg.clone()
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    cfg.freeze()
    return cfg


def test_off_by_default_and_when_batches_match():
    cfg = _cfg(BASE_LR=0.01, IMS_PER_BATCH=4)
    assert cfg.SOLVER.REFERENCE_BATCH == 0 and scale_lr_to_batch(cfg) is cfg
    same = _cfg(BASE_LR=0.01, IMS_PER_BATCH=16, REFERENCE_BATCH=16)
    assert scale_lr_to_batch(same).SOLVER.BASE_LR == 0.01


def test_scales_base_lr_only(caplog):
    cfg = _cfg(BASE_LR=0.01, IMS_PER_BATCH=4, REFERENCE_BATCH=16, MAX_ITER=9000, STEPS=(6000, 8000),
               WARMUP_ITERS=500)
    with caplog.at_level(logging.INFO):
        scaled = scale_lr_to_batch(cfg)
    assert scaled.SOLVER.BASE_LR == pytest.approx(0.01 * 4 / 16)
    assert scaled.SOLVER.REFERENCE_BATCH == 4 and scaled.is_frozen()
    assert (scaled.SOLVER.MAX_ITER, tuple(scaled.SOLVER.STEPS), scaled.SOLVER.WARMUP_ITERS) == (9000, (6000, 8000), 500)
    assert cfg.SOLVER.BASE_LR == 0.01  # the input config is not modified
    assert "BASE_LR 0.01 x 4/16 = 0.0025" in caplog.text
    assert scale_lr_to_batch(scaled).SOLVER.BASE_LR == pytest.approx(0.0025)  # applying it again: no change
    assert scale_lr_to_batch(_cfg(BASE_LR=0.01, IMS_PER_BATCH=32, REFERENCE_BATCH=16)).SOLVER.BASE_LR == pytest.approx(0.02)


def test_scaled_schedule_by_hand():
    cfg = scale_lr_to_batch(_cfg(BASE_LR=0.02, IMS_PER_BATCH=2, REFERENCE_BATCH=16, BIAS_LR_FACTOR=2,
                                 STEPS=(6, 8), GAMMA=0.1, WARMUP_ITERS=4, WARMUP_FACTOR=0.5,
                                 WARMUP_METHOD="linear"))
    model = nn.Linear(3, 2)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    base = 0.02 * 2 / 16  # 0.0025
    # update i: warmup 0.5 * (1 - i/4) + i/4 for i < 4, then 0.1 ** (number of steps <= i)
    factors = [0.5, 0.625, 0.75, 0.875, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    seen = []
    for _ in factors:
        seen.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    for lrs, f in zip(seen, factors):
        assert lrs["weight"] == pytest.approx(base * f)
        assert lrs["bias"] == pytest.approx(2 * base * f)


def test_negative_reference_is_an_error():
    with pytest.raises(ValueError, match="SOLVER.REFERENCE_BATCH"):
        scale_lr_to_batch(_cfg(REFERENCE_BATCH=-1))
