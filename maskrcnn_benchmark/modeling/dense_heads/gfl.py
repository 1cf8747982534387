"""Generalized Focal Loss (Li et al., NeurIPS 2020, "GFL"): the registered ``"GFL"`` dense head.

As mmdetection 3.3's ``GFLHead`` (the reference for the settings and checkpoints):

- Head: separate cls / box towers (GroupNorm, no conv bias by default), a cls predictor of ``A * C``
  logits (the joint class-IoU score, no separate quality branch) and a box predictor of
  ``A * 4 * (reg_max + 1)`` logits: per side a discrete distribution over the distances
  ``0, 1, ..., reg_max`` in strides (after the level's ``Scale``).
- Priors and assignment: the anchors of ``MODEL.<ANCHOR_NODE>`` (one square anchor per location,
  size ``ANCHOR_SIZES[l]``) and the assigner ``MODEL.GFL.ASSIGNER`` of ``ASSIGNERS`` built from
  ``MODEL.<ASSIGNER_NODE>`` (default ``MODEL.ATSS``: ATSS, or ``"DYNAMIC_ATSS"``: Dynamic ATSS on
  the integral-decoded predictions).
- Integral decoding (:func:`integral`): the distance of a side is the expectation
  ``sum_i softmax(logits)_i * i``; the boxes are the anchor centre -/+ distance x stride. The
  assigner's predictions (Dynamic ATSS) and inference both decode this way (one decoder,
  :class:`DistributionCoder`).
- Losses (:class:`GFLLoss`), with ``q`` = IoU(decoded prediction (detached), GT) of a positive and
  ``w`` = its highest detached class probability:

  - ``loss_cls = QFL(logits, labels, q, beta) / num_pos`` (quality focal loss on the joint score);
  - ``loss_bbox = giou_weight * sum_pos w (1 - GIoU) / sum_pos w``;
  - ``loss_dfl = dfl_weight * sum_pos w * mean_sides DFL / sum_pos w`` with
    ``DFL(S, y) = -((y_r - y) log S_l + (y - y_l) log S_r)``, ``y_l = floor(y)``, ``y_r = y_l + 1``,
    ``y`` the target distance in strides clamped to ``[0, reg_max - 0.01]``.

  ``num_pos`` and ``sum w`` all-reduced and averaged per process (``num_pos`` at least 1; a
  ``sum w`` below ``WEIGHT_EPS`` gives zero box losses that keep the graph).
- Inference: ``sigmoid(cls) > INFERENCE_TH``; that probability is the score.

Parameter names as the ATSS head (``cls_tower``, ``bbox_tower``, ``cls_logits``, ``bbox_pred``,
``scales``), so mmdetection's ``bbox_head.{cls,reg}_convs`` / ``gfl_cls`` / ``gfl_reg`` /
``scales`` load through ``MODEL.WEIGHT`` with the generic mmdetection name map.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn_benchmark.config import CfgNode
from maskrcnn_benchmark.layers import Scale
from maskrcnn_benchmark.layers.losses import giou_loss, quality_focal_loss
from maskrcnn_benchmark.layers.padding_mask import masked_forward
from maskrcnn_benchmark.modeling.anchor_generator import AnchorGenerator
from maskrcnn_benchmark.modeling.assigners import BatchAssignment, build_assigner
from maskrcnn_benchmark.modeling.box_coder import PointCoder
from maskrcnn_benchmark.layers import elementwise_iou
from maskrcnn_benchmark.utils.legacy_plus_one import legacy_plus_one_from_config

from .base import (WEIGHT_EPS, DenseHead, DenseOutputs, DensePostProcessor, ScoreRule,
                   check_num_classes, conv_tower, init_conv_std, per_level_masks, positive_boxes,
                   reduce_mean_count, where_weighted)
from .registry import DENSE_HEADS

__all__ = ["GFL_DEFAULTS", "GFLHead", "GFLLoss", "DistributionCoder", "integral",
           "distribution_focal_loss", "build_gfl"]


class GFLHead(nn.Module):
    """Classification and box towers; a joint-score predictor and a distribution box predictor.

    Args:
        in_channels: channels of every FPN level (and of the towers).
        num_classes: foreground classes C.
        num_anchors: anchors per location A.
        num_convs: convs per tower.
        num_levels: FPN levels (one ``Scale`` each).
        reg_max: largest distance bin (``reg_max + 1`` bins per side).
        prior_prob: initial foreground probability (cls bias ``-log((1 - p) / p)``).
        num_groups: GroupNorm groups (0: none).
        conv_bias: bias in the tower convs (False: mmdetection's GFLHead).
        use_dcn_in_tower: the last conv of each tower is a modulated deformable conv.

    ``forward(features, masks=None)``: per level Tensor[B, in_channels, H_l, W_l] -> two lists
    over levels: cls logits [B, A*C, H, W] and distribution logits [B, A*4*(reg_max+1), H, W].
    """

    class_dependent_tensors = ("cls_logits.weight", "cls_logits.bias")

    def __init__(self, in_channels: int, num_classes: int, num_anchors: int = 1, num_convs: int = 4,
                 num_levels: int = 5, reg_max: int = 16, prior_prob: float = 0.01,
                 num_groups: int = 32, conv_bias: bool = False, use_dcn_in_tower: bool = False):
        super().__init__()
        if reg_max < 1:
            raise ValueError(f"GFLHead: reg_max must be >= 1, got {reg_max}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.reg_max = int(reg_max)
        self.cls_tower = conv_tower(in_channels, num_convs, num_groups, use_dcn_in_tower, conv_bias)
        self.bbox_tower = conv_tower(in_channels, num_convs, num_groups, use_dcn_in_tower, conv_bias)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4 * (self.reg_max + 1), 3, padding=1)
        init_conv_std([*self.cls_tower, *self.bbox_tower, self.cls_logits, self.bbox_pred], std=0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])

    @property
    def output_dims(self) -> Dict[str, int]:
        """Per-prior widths: C joint scores, 4 x (reg_max + 1) distribution logits."""
        return {"cls_logits": self.num_classes, "box_regression": 4 * (self.reg_max + 1)}

    def forward(self, features: Sequence[torch.Tensor],
                masks: Optional[Sequence[torch.Tensor]] = None):
        if len(features) != len(self.scales):
            raise ValueError(f"GFLHead: {len(features)} feature levels, built for {len(self.scales)}")
        logits, dists = [], []
        for scale, x, m in zip(self.scales, features, per_level_masks(masks, features)):
            logits.append(masked_forward(self.cls_logits, masked_forward(self.cls_tower, x, m), m))
            dists.append(scale(masked_forward(self.bbox_pred, masked_forward(self.bbox_tower, x, m), m)))
        return logits, dists


def integral(logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Tensor[..., 4 * (reg_max + 1)] distribution logits -> Tensor[..., 4] expected distances
    ``sum_i softmax_i * i`` (in bins, float32)."""
    prob = logits.float().unflatten(-1, (4, reg_max + 1)).softmax(dim=-1)
    return (prob * torch.arange(reg_max + 1, device=logits.device, dtype=prob.dtype)).sum(-1)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL: Tensor[..., R + 1] logits, Tensor[...] targets in ``[0, R)`` ->
    Tensor[...] ``-((y_l + 1 - y) log S_{y_l} + (y - y_l) log S_{y_l + 1})``, ``y_l = floor(y)``."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    left = target.floor().clamp(0, logits.shape[-1] - 2)
    w_left, w_right = left + 1 - target, target - left
    left = left.to(torch.int64)[..., None]
    return -(w_left * log_p.gather(-1, left)[..., 0] + w_right * log_p.gather(-1, left + 1)[..., 0])


class DistributionCoder:
    """Integral decoding of distribution logits from anchor centres (the one decoder of GFL:
    assigner predictions and inference).

    Args:
        reg_max: largest bin; scale: distances in units of ``anchor_width / scale`` (the stride
            for anchors of ``scale`` x stride, see :class:`PointCoder`).
    """

    def __init__(self, reg_max: int, scale: float):
        self.reg_max = int(reg_max)
        self.points = PointCoder(scale)

    def decode(self, logits: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Tensor[..., 4(R+1)], anchors Tensor[..., 4] -> Tensor[..., 4] xyxy boxes."""
        return self.points.decode(integral(logits, self.reg_max), anchors)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Tensor[N, 4] boxes, Tensor[N, 4] anchors -> Tensor[N, 4] DFL targets ``(l, t, r, b)`` in
        strides, clamped to ``[0, reg_max - 0.01]`` (mmdetection's ``bbox2distance``)."""
        return self.points.encode(boxes, anchors).clamp(0, self.reg_max - 0.01)


class GFLLoss:
    """QFL + quality-weighted GIoU + DFL (see the module docstring).

    Args:
        coder: :class:`DistributionCoder`; beta: QFL exponent (2); qfl_weight (1),
        giou_weight (2), dfl_weight (0.25): the loss weights.

    ``__call__(outputs, anchors_per_level, targets, assignment)`` returns
    ``{"loss_cls", "loss_bbox", "loss_dfl"}``.
    """

    def __init__(self, coder: DistributionCoder, beta: float = 2.0, qfl_weight: float = 1.0,
                 giou_weight: float = 2.0, dfl_weight: float = 0.25):
        self.coder = coder
        self.beta = float(beta)
        self.qfl_weight = float(qfl_weight)
        self.giou_weight = float(giou_weight)
        self.dfl_weight = float(dfl_weight)

    def __call__(self, outputs: DenseOutputs, anchors_per_level: List[torch.Tensor],
                 targets, assignment: BatchAssignment) -> Dict[str, torch.Tensor]:
        logits, reg = outputs.cls_logits, outputs.box_regression
        labels, pos = assignment.labels, assignment.pos
        b, n, c = logits.shape
        anchors = torch.cat(anchors_per_level)
        target_boxes = positive_boxes(assignment, anchors)                       # [B, N, 4]
        reg = torch.where(pos[..., None], reg.float(), 0)
        boxes = self.coder.decode(reg, anchors)                                  # [B, N, 4]
        quality = torch.where(pos, elementwise_iou(boxes.detach(), target_boxes), 0)
        weight = torch.where(pos, logits.detach().float().sigmoid().amax(dim=-1), 0)
        num_pos = reduce_mean_count(pos.sum(), device=logits.device)
        loss_cls = self.qfl_weight * quality_focal_loss(
            logits.reshape(-1, c).float(), labels.reshape(-1), quality.reshape(-1),
            gamma=self.beta) / num_pos
        w_sum = reduce_mean_count(weight.sum(), device=logits.device, min_value=0.0)
        loss_bbox = giou_loss(boxes.reshape(-1, 4), target_boxes.reshape(-1, 4),
                              weight=weight.reshape(-1))
        dist_t = self.coder.encode(target_boxes.reshape(-1, 4), anchors.repeat(b, 1))
        dfl = distribution_focal_loss(reg.reshape(-1, 4, self.coder.reg_max + 1), dist_t)
        loss_dfl = (dfl.mean(dim=-1) * weight.reshape(-1)).sum()
        norm = w_sum.clamp(min=WEIGHT_EPS)
        return {"loss_cls": loss_cls,
                "loss_bbox": where_weighted(w_sum, self.giou_weight * loss_bbox / norm),
                "loss_dfl": where_weighted(w_sum, self.dfl_weight * loss_dfl / norm)}


# ---------------------------------------------------------------------------------------------
# cfg.MODEL.GFL, registered into the default config with the head below (this module's import).
# GFL (Generalized Focal Loss; head, losses and inference here, anchors and assignment from the
# nodes named below: their keys are not copied). Defaults: mmdetection's gfl_r50_fpn_1x_coco.
# ---------------------------------------------------------------------------------------------
GFL_DEFAULTS = CfgNode()
# Foreground classes + 1 (0: from the training data).
GFL_DEFAULTS.NUM_CLASSES = 81
# Assigner (modeling/assigners ASSIGNERS): "ATSS" (the POSITIVE_TYPE family of ASSIGNER_NODE) or
# "DYNAMIC_ATSS" (Dynamic ATSS on the integral-decoded predictions).
GFL_DEFAULTS.ASSIGNER = "ATSS"
# cfg.MODEL node holding the assigner's keys (TOPK, POSITIVE_TYPE, ...) and the anchors' keys
# (ANCHOR_SIZES, ASPECT_RATIOS, ANCHOR_STRIDES, SCALES_PER_OCTAVE, OCTAVE; one anchor per location).
GFL_DEFAULTS.ASSIGNER_NODE = "ATSS"
GFL_DEFAULTS.ANCHOR_NODE = "ATSS"
# Convs per tower, GroupNorm groups from MODEL.GROUP_NORM; bias in the tower convs (mmdetection: none).
GFL_DEFAULTS.NUM_CONVS = 4
GFL_DEFAULTS.CONV_BIAS = False
GFL_DEFAULTS.USE_DCN_IN_TOWER = False
# Prior probability of the cls bias init.
GFL_DEFAULTS.PRIOR_PROB = 0.01
# Largest distance bin in strides (REG_MAX + 1 bins per side).
GFL_DEFAULTS.REG_MAX = 16
# Quality focal loss exponent and the loss weights (QFL, GIoU, DFL).
GFL_DEFAULTS.QFL_BETA = 2.0
GFL_DEFAULTS.QFL_WEIGHT = 1.0
GFL_DEFAULTS.GIOU_WEIGHT = 2.0
GFL_DEFAULTS.DFL_WEIGHT = 0.25
# Score threshold on sigmoid(cls) (the score), candidates per level before NMS, NMS IoU.
GFL_DEFAULTS.INFERENCE_TH = 0.05
GFL_DEFAULTS.PRE_NMS_TOP_N = 1000
GFL_DEFAULTS.NMS_TH = 0.6


@DENSE_HEADS.register("GFL", config_node="GFL", reads=("ATSS",), defaults=GFL_DEFAULTS)
def build_gfl(cfg, in_channels: int) -> DenseHead:
    """``"GFL"`` from ``cfg.MODEL.GFL``, the anchors of ``MODEL.<GFL.ANCHOR_NODE>`` and the
    assigner ``GFL.ASSIGNER`` of ``MODEL.<GFL.ASSIGNER_NODE>`` (both ``MODEL.ATSS`` by default)."""
    g = cfg.MODEL.GFL
    a = cfg.MODEL[g.ANCHOR_NODE]
    num_anchors = len(a.ASPECT_RATIOS) * a.SCALES_PER_OCTAVE
    if num_anchors != 1:
        raise ValueError(f"GFL decodes distances from one square anchor per location: "
                         f"MODEL.{g.ANCHOR_NODE}.ASPECT_RATIOS / SCALES_PER_OCTAVE give {num_anchors}")
    head = GFLHead(in_channels, check_num_classes("MODEL.GFL.NUM_CLASSES", g.NUM_CLASSES), num_anchors,
                   g.NUM_CONVS, num_levels=len(a.ANCHOR_STRIDES), reg_max=g.REG_MAX,
                   prior_prob=g.PRIOR_PROB, num_groups=cfg.MODEL.GROUP_NORM.NUM_GROUPS,
                   conv_bias=g.CONV_BIAS, use_dcn_in_tower=g.USE_DCN_IN_TOWER)
    coder = DistributionCoder(g.REG_MAX, a.ANCHOR_SIZES[0] / a.ANCHOR_STRIDES[0])
    loss = GFLLoss(coder, beta=g.QFL_BETA, qfl_weight=g.QFL_WEIGHT, giou_weight=g.GIOU_WEIGHT,
                   dfl_weight=g.DFL_WEIGHT)
    post = DensePostProcessor(pre_nms_top_n=g.PRE_NMS_TOP_N, nms_thresh=g.NMS_TH,
                              detections_per_img=cfg.TEST.DETECTIONS_PER_IMG,
                              legacy_plus_one=legacy_plus_one_from_config(cfg))
    return DenseHead(head, AnchorGenerator.from_config(cfg, g.ANCHOR_NODE),
                     build_assigner(cfg, g.ASSIGNER, g.ASSIGNER_NODE), loss, post, coder.decode,
                     ScoreRule(g.INFERENCE_TH))
