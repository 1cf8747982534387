"""Convert mmdetection 2.x / 3.x detector checkpoints to this project's parameter names.

An mmdetection ``.pth`` holds ``state_dict`` (next to ``meta`` / ``optimizer``) with ``backbone.*``
(its ResNet: torchvision names), ``neck.*`` (its FPN) and ``bbox_head.*``; it is recognised by
those prefixes (:func:`is_mmdet_state_dict`) and renamed by :func:`convert_mmdet_weights`:

==========================================================  ==============================================
mmdetection                                                 here (suffixes of the model's names)
==========================================================  ==============================================
``backbone.conv1`` / ``bn1`` / ``layer{s}.*``               ``body.stem.conv1`` / ``body.stem.bn1`` /
                                                            ``body.layer{s}.*`` (BN eps 1e-5 folded into
                                                            ``running_var``, ``num_batches_tracked`` dropped)
``neck.lateral_convs.{i}.conv``                             ``fpn.fpn_inner{i + 5 - L}`` (L lateral convs)
``neck.fpn_convs.{i}.conv``, ``i < L``                      ``fpn.fpn_layer{i + 5 - L}``
``neck.fpn_convs.{L}.conv`` / ``{L + 1}``                   ``fpn.top_blocks.p6`` / ``p7``
``bbox_head.{cls,reg}_convs.{i}.conv`` / ``.gn``            ``head.{cls,bbox}_tower.{k i}`` / ``{k i + 1}``
                                                            (k = 3 with GroupNorm, 2 without)
``bbox_head.<prefix>_cls`` (retina, atss, conv, gfl, ...)   ``head.cls_logits``
``bbox_head.<prefix>_reg``                                  ``head.bbox_pred`` (GFL: ``4 * (reg_max + 1)``
                                                            channels, side-major as here)
``bbox_head.<prefix>_centerness``                           ``head.centerness`` (AutoAssign: objectness)
``bbox_head.scales.{l}.scale`` (a 0-d tensor)               ``head.scales.{l}.scale`` (shape [1])
``bbox_head.center_prior.{mean,sigma}``                     ``center_prior.{mean,sigma}``
``bbox_head.integral.project`` (GFLHead's ``Integral``)     dropped: checked to be ``0, 1, ..., reg_max``,
                                                            the bins the GFL head here integrates over
==========================================================  ==============================================

Classes: mmdetection's sigmoid heads have one channel per foreground class, label ``c`` in
``0..C-1`` at channel ``c`` (anchor-major: channel ``a * C + c``); here label ``c + 1`` (``1..C``,
0 = background) is also channel ``c``, so no channel is reordered (``NUM_CLASSES`` = C + 1).
Names this map does not know are returned unchanged (they then match nothing and are reported).
The conventions that differ (anchor centres, tower biases, FPN extra levels, input
normalisation, ResNet style) are config keys, set by the ``configs/*/*_mmdet.yaml`` files.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Mapping

import torch

from .c2_model_loading import convert_torchvision_resnet_weights

__all__ = ["is_mmdet_state_dict", "convert_mmdet_weights"]

# mmdetection names a head's predictors ``<prefix>_cls`` / ``_reg`` / ``_centerness`` (the prefix
# the head's: retina, atss, conv, gfl, ...): any such prefix maps, so a new head needs no entry here
_HEAD_LAYERS = {"cls": "cls_logits", "reg": "bbox_pred", "centerness": "centerness"}
_TOWER = re.compile(r"^(cls|reg)_convs\.(\d+)\.(conv|gn)\.(weight|bias)$")
_HEAD_LAYER = re.compile(r"^[a-z0-9]+_(cls|reg|centerness)\.(weight|bias)$")
_SCALE = re.compile(r"^scales\.(\d+)\.scale$")
_NECK = re.compile(r"^(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)$")
# GFLHead's ``Integral`` buffer: the bin values ``linspace(0, reg_max, reg_max + 1)``, a constant
_INTEGRAL = "integral.project"


def is_mmdet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for an mmdetection detector: keys under ``bbox_head.`` and ``neck.`` / ``backbone.``."""
    keys = list(state_dict.keys())
    return (any(k.startswith("bbox_head.") for k in keys)
            and any(k.startswith(("neck.", "backbone.")) for k in keys))


def _sub(state_dict: Mapping[str, torch.Tensor], prefix: str) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix))


def _convert_neck(neck: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    num_lateral = len({m.group(2) for m in map(_NECK.match, neck) if m and m.group(1) == "lateral_convs"})
    first = 5 - num_lateral  # 3 laterals (start_level 1: C3-C5) -> fpn_inner2..4
    out = OrderedDict()
    for key, value in neck.items():
        m = _NECK.match(key)
        if m is None:
            out["neck." + key] = value
            continue
        kind, i, param = m.group(1), int(m.group(2)), m.group(3)
        if kind == "lateral_convs":
            out[f"fpn.fpn_inner{i + first}.{param}"] = value
        elif i < num_lateral:
            out[f"fpn.fpn_layer{i + first}.{param}"] = value
        else:
            out[f"fpn.top_blocks.p{6 + i - num_lateral}.{param}"] = value
    return out


def _check_integral_bins(project: torch.Tensor) -> None:
    """GFLHead's ``bbox_head.integral.project`` must be ``0, 1, ..., reg_max``: the GFL head here
    integrates over those bins (``gfl.integral``), so a checkpoint with other values is refused."""
    expected = torch.arange(project.numel(), dtype=torch.float32)
    if project.ndim != 1 or project.numel() < 2 or not torch.allclose(project.float(), expected, atol=1e-5):
        raise ValueError(f"mmdetection checkpoint: bbox_head.{_INTEGRAL} (shape {tuple(project.shape)}) must be "
                         f"the GFL bins 0, 1, ..., reg_max, got {project.flatten()[:8].tolist()}; "
                         "the GFL head here integrates over exactly those")


def _convert_head(head: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    per_conv = 3 if any(".gn." in k for k in head) else 2  # conv [, GroupNorm], ReLU
    out = OrderedDict()
    for key, value in head.items():
        if key.startswith("center_prior."):
            out[key] = value
            continue
        if key == _INTEGRAL:
            _check_integral_bins(value)
            continue
        m = _TOWER.match(key)
        if m is not None:
            tower = "cls_tower" if m.group(1) == "cls" else "bbox_tower"
            index = int(m.group(2)) * per_conv + (1 if m.group(3) == "gn" else 0)
            out[f"head.{tower}.{index}.{m.group(4)}"] = value
            continue
        m = _SCALE.match(key)
        if m is not None:
            out[f"head.scales.{m.group(1)}.scale"] = value.reshape(1)
            continue
        m = _HEAD_LAYER.match(key)
        if m is not None and m.group(1) in _HEAD_LAYERS:
            out[f"head.{_HEAD_LAYERS[m.group(1)]}.{m.group(2)}"] = value
            continue
        out["bbox_head." + key] = value
    return out


def convert_mmdet_weights(state_dict: Mapping[str, torch.Tensor], bn_eps: float = 1e-5
                          ) -> "OrderedDict[str, torch.Tensor]":
    """mmdetection detector state dict -> our names (the table in the module docstring).

    ``bn_eps``: the backbone's BatchNorm eps (mmdetection's default 1e-5), folded into
    ``running_var`` so that FrozenBatchNorm2d (eps 0) reproduces its eval-mode output.
    """
    out = OrderedDict()
    backbone = convert_torchvision_resnet_weights(_sub(state_dict, "backbone."), bn_eps=bn_eps)
    out.update(("body." + k, v) for k, v in backbone.items())
    out.update(_convert_neck(_sub(state_dict, "neck.")))
    out.update(_convert_head(_sub(state_dict, "bbox_head.")))
    for key, value in state_dict.items():  # anything else (e.g. "data_preprocessor.*") unchanged
        if not key.startswith(("backbone.", "neck.", "bbox_head.")):
            out[key] = value
    return out
