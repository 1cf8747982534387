"""Build the SGD optimizer (per-parameter lr / weight decay groups) and the lr scheduler from cfg."""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

import torch
from torch import nn

from .lr_scheduler import WarmupMultiStepLR

# Normalisation layers whose affine parameters get SOLVER.WEIGHT_DECAY_NORM (when >= 0).
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
              nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm)


# Parameters of the offset (and mask) convs of the deformable convs (layers/dcn.py DFConv2d.offset),
# named as in the original releases (their SOLVER.DCONV_OFFSETS_LR_FACTOR matched these endings).
DCN_OFFSET_SUFFIXES = (".offset.weight", ".offset.bias")


def get_param_groups(model: nn.Module, base_lr: float, weight_decay: float, bias_lr_factor: float = 1.0,
                     weight_decay_bias: float = 0.0, weight_decay_norm: float = -1.0,
                     dcn_offset_lr_factor: float = 1.0) -> List[Dict]:
    """One param group per trainable parameter, as in maskrcnn-benchmark.

    - biases (names ending in "bias"): lr ``base_lr * bias_lr_factor``, weight decay ``weight_decay_bias``;
    - affine parameters of normalisation layers (``NORM_TYPES``): weight decay ``weight_decay_norm``
      when it is >= 0 (their bias still gets the bias lr);
    - everything else: ``base_lr`` and ``weight_decay``;
    - then the offset convs of the deformable convs (full names ending in ``DCN_OFFSET_SUFFIXES``)
      have their lr multiplied by ``dcn_offset_lr_factor`` (the offset bias: ``base_lr *
      bias_lr_factor * dcn_offset_lr_factor``, as the original ``DCONV_OFFSETS_LR_FACTOR``).
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
            if ("." + name).endswith(DCN_OFFSET_SUFFIXES):
                lr = lr * dcn_offset_lr_factor
            groups.append({"params": [param], "lr": lr, "weight_decay": wd, "name": name})
    return groups


def make_optimizer(cfg, model: nn.Module) -> torch.optim.SGD:
    """SGD with the param groups of :func:`get_param_groups` from ``cfg.SOLVER`` (BASE_LR, WEIGHT_DECAY,
    BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS, WEIGHT_DECAY_NORM, DCONV_OFFSETS_LR_FACTOR, MOMENTUM).

    On a CUDA model the fused implementation (same update rule): with ``SOLVER.AMP fp16`` the
    ``GradScaler`` then hands it the inf check as a tensor, instead of reading it on the host before
    every step (the non-fused path's one extra sync per step)."""
    s = cfg.SOLVER
    groups = get_param_groups(model, s.BASE_LR, s.WEIGHT_DECAY, bias_lr_factor=s.BIAS_LR_FACTOR,
                              weight_decay_bias=s.WEIGHT_DECAY_BIAS, weight_decay_norm=s.WEIGHT_DECAY_NORM,
                              dcn_offset_lr_factor=s.DCONV_OFFSETS_LR_FACTOR)
    if not groups:
        raise ValueError("make_optimizer: the model has no trainable parameters")
    fused = all(p.device.type == "cuda" for g in groups for p in g["params"]) or None
    return torch.optim.SGD(groups, lr=s.BASE_LR, momentum=s.MOMENTUM, fused=fused)


def scale_lr_to_batch(cfg, logger: Optional[logging.Logger] = None):
    """The linear learning-rate scaling rule (Goyal et al. 2017), applied once at training set-up.

    With ``SOLVER.REFERENCE_BATCH`` = R > 0 (the global batch that ``SOLVER.BASE_LR`` was tuned for) and
    ``SOLVER.IMS_PER_BATCH`` = B != R, returns a copy of ``cfg`` with ``BASE_LR * B / R`` and
    ``REFERENCE_BATCH = B`` (so the returned config is self-consistent and a second call changes
    nothing). As mmdetection's ``auto_scale_lr``, only the learning rate changes: MAX_ITER, STEPS,
    WARMUP_ITERS and the periods stay as configured (detectron2's ``auto_scale_workers`` also
    rescales those; do that by hand if wanted). ``REFERENCE_BATCH 0`` (default) or B == R: ``cfg``
    unchanged. The log says what was done.
    """
    logger = logger or logging.getLogger("maskrcnn_benchmark.solver")
    reference, batch = int(cfg.SOLVER.REFERENCE_BATCH), int(cfg.SOLVER.IMS_PER_BATCH)
    if reference < 0:
        raise ValueError(f"SOLVER.REFERENCE_BATCH must be >= 0 (0: no lr scaling), got {reference}")
    if reference == 0:
        return cfg
    if batch <= 0:
        raise ValueError(f"SOLVER.IMS_PER_BATCH must be positive, got {batch}")
    if batch == reference:
        logger.info("Linear lr scaling: SOLVER.IMS_PER_BATCH equals SOLVER.REFERENCE_BATCH (%d); "
                    "BASE_LR %g unchanged", batch, cfg.SOLVER.BASE_LR)
        return cfg
    old_lr = float(cfg.SOLVER.BASE_LR)
    new_lr = old_lr * batch / reference
    cfg = cfg.clone()
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.SOLVER.BASE_LR = new_lr
    cfg.SOLVER.REFERENCE_BATCH = batch
    if was_frozen:
        cfg.freeze()
    logger.info("Linear lr scaling: SOLVER.IMS_PER_BATCH %d vs SOLVER.REFERENCE_BATCH %d -> BASE_LR %g x %d/%d "
                "= %g (iterations, steps and warmup unchanged)", batch, reference, old_lr, batch, reference, new_lr)
    return cfg


def make_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> WarmupMultiStepLR:
    """WarmupMultiStepLR from ``cfg.SOLVER`` (STEPS, GAMMA, WARMUP_FACTOR/ITERS/METHOD)."""
    s = cfg.SOLVER
    return WarmupMultiStepLR(optimizer, s.STEPS, s.GAMMA, warmup_factor=s.WARMUP_FACTOR,
                             warmup_iters=s.WARMUP_ITERS, warmup_method=s.WARMUP_METHOD)
