"""Build the SGD optimizer (per-parameter lr / weight decay groups) and the lr scheduler from cfg."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from .lr_scheduler import WarmupMultiStepLR

# Normalisation layers whose affine parameters get SOLVER.WEIGHT_DECAY_NORM (when >= 0).
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
              nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm)


def get_param_groups(model: nn.Module, base_lr: float, weight_decay: float, bias_lr_factor: float = 1.0,
                     weight_decay_bias: float = 0.0, weight_decay_norm: float = -1.0) -> List[Dict]:
    """One param group per trainable parameter, as in maskrcnn-benchmark.

    - biases (names ending in "bias"): lr ``base_lr * bias_lr_factor``, weight decay ``weight_decay_bias``;
    - affine parameters of normalisation layers (``NORM_TYPES``): weight decay ``weight_decay_norm``
      when it is >= 0 (their bias still gets the bias lr);
    - everything else: ``base_lr`` and ``weight_decay``.
    Frozen parameters (``requires_grad`` False) and duplicates (shared parameters) are skipped.

    Returns: list of dicts ``{"params": [p], "lr", "weight_decay", "name"}``.
    """
    groups: List[Dict] = []
    seen = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES) or type(module).__name__ in ("FrozenBatchNorm2d",)
        for pname, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, wd = base_lr, weight_decay
            if is_norm and weight_decay_norm >= 0:
                wd = weight_decay_norm
            if pname.endswith("bias"):
                lr = base_lr * bias_lr_factor
                wd = weight_decay_bias
            name = f"{module_name}.{pname}" if module_name else pname
            groups.append({"params": [param], "lr": lr, "weight_decay": wd, "name": name})
    return groups


def make_optimizer(cfg, model: nn.Module) -> torch.optim.SGD:
    """SGD with the param groups of :func:`get_param_groups` from ``cfg.SOLVER``."""
    s = cfg.SOLVER
    groups = get_param_groups(model, s.BASE_LR, s.WEIGHT_DECAY, bias_lr_factor=s.BIAS_LR_FACTOR,
                              weight_decay_bias=s.WEIGHT_DECAY_BIAS, weight_decay_norm=s.WEIGHT_DECAY_NORM)
    if not groups:
        raise ValueError("make_optimizer: the model has no trainable parameters")
    return torch.optim.SGD(groups, lr=s.BASE_LR, momentum=s.MOMENTUM)


def make_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> WarmupMultiStepLR:
    """WarmupMultiStepLR from ``cfg.SOLVER`` (STEPS, GAMMA, WARMUP_FACTOR/ITERS/METHOD)."""
    s = cfg.SOLVER
    return WarmupMultiStepLR(optimizer, s.STEPS, s.GAMMA, warmup_factor=s.WARMUP_FACTOR,
                             warmup_iters=s.WARMUP_ITERS, warmup_method=s.WARMUP_METHOD)
