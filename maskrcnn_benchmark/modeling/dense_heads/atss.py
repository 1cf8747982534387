"""ATSS (Zhang et al., CVPR 2020): the conv head shared with Dynamic ATSS, its loss and the
registered ``"ATSS"`` dense head (a :class:`~.base.DenseHead` of these parts).

Parameter names follow the original release (``cls_tower.{i}``, ``bbox_tower.{i}``,
``cls_logits``, ``bbox_pred``, ``centerness``, ``scales.{l}.scale``) so its checkpoints load.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn_benchmark.layers import Scale, sigmoid_focal_loss
from maskrcnn_benchmark.layers.losses import giou_loss
from maskrcnn_benchmark.layers.padding_mask import masked_forward
from maskrcnn_benchmark.modeling.anchor_generator import AnchorGenerator
from maskrcnn_benchmark.modeling.assigners import BatchAssignment, build_assigner
from maskrcnn_benchmark.modeling.box_coder import build_box_coder
from maskrcnn_benchmark.structures.box_ops import box_centers, centerness, point_box_distances
from maskrcnn_benchmark.utils.legacy_plus_one import legacy_plus_one_from_config

from .base import (WEIGHT_EPS, DenseHead, DenseOutputs, DensePostProcessor, ScoreRule,
                   check_num_classes, conv_tower, init_conv_std, per_level_masks, positive_boxes,
                   reduce_mean_count, where_weighted)
from .registry import DENSE_HEADS

__all__ = ["ATSSHead", "ATSSLoss", "centerness_targets", "build_atss", "build_atss_parts"]


class ATSSHead(nn.Module):
    """Separate classification and box towers with three predictors.

    Args:
        in_channels: channels of every FPN level (and of the towers).
        num_classes: foreground classes C (the cls conv has ``A * C`` outputs).
        num_anchors: anchors per location A.
        num_convs: convs per tower.
        num_levels: FPN levels (one ``Scale`` each).
        prior_prob: initial foreground probability (cls bias ``-log((1 - p) / p)``).
        use_dcn_in_tower: the last conv of each tower is a modulated deformable conv.
        regression_type: ``"BOX"`` (deltas) or ``"POINT"`` (ReLU'd distances, bias init 4,
            requires A == 1).
        num_groups: GroupNorm groups.
        conv_bias: bias in the tower convs (False: mmdetection's ATSSHead).

    ``forward(features)`` takes per level Tensor[B, in_channels, H_l, W_l] and returns three lists
    over levels: cls logits [B, A*C, H, W], box regression [B, A*4, H, W] (after the level's
    ``Scale``) and centerness / IoU logits [B, A, H, W] (from the box tower).
    """

    # first dimension A * C: not loaded from a checkpoint with another class count (fine-tuning)
    class_dependent_tensors = ("cls_logits.weight", "cls_logits.bias")

    @property
    def output_dims(self) -> Dict[str, int]:
        """Per-prior width of each branch of ``forward`` (the :class:`~.base.DenseConvHead` contract)."""
        return {"cls_logits": self.num_classes, "box_regression": 4, "quality": 1}

    def __init__(self, in_channels: int, num_classes: int, num_anchors: int = 1, num_convs: int = 4,
                 num_levels: int = 5, prior_prob: float = 0.01, use_dcn_in_tower: bool = False,
                 regression_type: str = "BOX", num_groups: int = 32, conv_bias: bool = True):
        super().__init__()
        if regression_type not in ("BOX", "POINT"):
            raise ValueError(f"ATSSHead: regression_type must be 'BOX' or 'POINT', got {regression_type!r}")
        if regression_type == "POINT" and num_anchors != 1:
            raise ValueError(f"ATSSHead: POINT regression needs 1 anchor per location, got {num_anchors}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.regression_type = regression_type
        self.cls_tower = conv_tower(in_channels, num_convs, num_groups, use_dcn_in_tower, conv_bias)
        self.bbox_tower = conv_tower(in_channels, num_convs, num_groups, use_dcn_in_tower, conv_bias)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, num_anchors, 3, padding=1)
        init_conv_std([*self.cls_tower, *self.bbox_tower, self.cls_logits, self.bbox_pred,
                       self.centerness], std=0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        if regression_type == "POINT":
            nn.init.constant_(self.bbox_pred.bias, 4.0)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])

    def forward(self, features: Sequence[torch.Tensor],
                masks: Optional[Sequence[torch.Tensor]] = None):
        """features: per level [B, C, H_l, W_l]; masks: per level [B, 1, H_l, W_l] canvases
        (batch-invariant inference, :func:`~maskrcnn_benchmark.layers.padding_mask.masked_forward`)
        or None."""
        if len(features) != len(self.scales):
            raise ValueError(f"ATSSHead: {len(features)} feature levels, built for {len(self.scales)}")
        logits, bbox_reg, centerness = [], [], []
        for scale, x, m in zip(self.scales, features, per_level_masks(masks, features)):
            cls_t = masked_forward(self.cls_tower, x, m)
            box_t = masked_forward(self.bbox_tower, x, m)
            logits.append(masked_forward(self.cls_logits, cls_t, m))
            reg = scale(masked_forward(self.bbox_pred, box_t, m))
            bbox_reg.append(F.relu(reg) if self.regression_type == "POINT" else reg)
            centerness.append(masked_forward(self.centerness, box_t, m))
        return logits, bbox_reg, centerness


def centerness_targets(anchors: torch.Tensor, gt_boxes: torch.Tensor,
                       legacy_plus_one: bool = False) -> torch.Tensor:
    """FCOS centerness of anchor centres in their GT boxes.

    Args:
        anchors: Tensor[..., 4]; gt_boxes: Tensor[..., 4] (matched rows, broadcastable).
        legacy_plus_one: the original ATSS release's target (``MODEL.LEGACY_PLUS_ONE``): it takes
            ``l, t, r, b`` from the anchor centre value to the inclusive GT sides, each the continuous
            distance minus 0.5 (``point_box_distances(plus_one=True)``).
    Returns:
        Tensor[...] in [0, 1] (:func:`~maskrcnn_benchmark.structures.box_ops.centerness`).
    """
    return centerness(point_box_distances(box_centers(anchors), gt_boxes, plus_one=legacy_plus_one))


class ATSSLoss:
    """Focal classification + centerness-weighted GIoU regression + centerness BCE.

    Args:
        box_coder: ``decode`` of the regression outputs.
        gamma, alpha: focal loss parameters.
        reg_loss_weight: weight of the GIoU term.
        legacy_plus_one: the original releases' centerness target and GIoU areas
            (:func:`centerness_targets`, ``giou_loss(plus_one=)``; ``MODEL.LEGACY_PLUS_ONE``).

    ``__call__(outputs, anchors_per_level (list of Tensor[N_l, 4]), targets, assignment)``
    (``outputs.quality``: centerness logits [B, N]) returns ``{"loss_cls", "loss_reg",
    "loss_centerness"}``. Normalisers: the number of positives and the sum of the centerness
    targets, all-reduced and averaged per process (at least 1 / "no positive" below
    ``WEIGHT_EPS``).
    """

    def __init__(self, box_coder, gamma: float = 2.0, alpha: float = 0.25,
                 reg_loss_weight: float = 2.0, legacy_plus_one: bool = False):
        self.box_coder = box_coder
        self.legacy_plus_one = bool(legacy_plus_one)
        self.gamma = gamma
        self.alpha = alpha
        self.reg_loss_weight = reg_loss_weight

    def __call__(self, outputs: DenseOutputs, anchors_per_level: List[torch.Tensor],
                 targets, assignment: BatchAssignment) -> Dict[str, torch.Tensor]:
        logits, bbox_reg, ctr = outputs.cls_logits, outputs.box_regression, outputs.quality
        labels, pos = assignment.labels, assignment.pos
        num_classes = logits.shape[-1]
        num_pos = reduce_mean_count(pos.sum(), device=logits.device)
        loss_cls = sigmoid_focal_loss(logits.reshape(-1, num_classes).float(), labels.reshape(-1),
                                      self.gamma, self.alpha).sum() / num_pos

        anchors = torch.cat(anchors_per_level)
        ctr_t = torch.where(pos, centerness_targets(anchors[None], assignment.matched_gt,
                                                       self.legacy_plus_one), 0)
        loss_reg, loss_ctr = self.box_and_quality_losses(bbox_reg, ctr, anchors, assignment, ctr_t,
                                                         num_pos)
        return {"loss_cls": loss_cls, "loss_reg": loss_reg, "loss_centerness": loss_ctr}

    def box_and_quality_losses(self, bbox_reg: torch.Tensor, quality_logits: torch.Tensor,
                               anchors: torch.Tensor, assignment: BatchAssignment,
                               target: torch.Tensor, num_pos: torch.Tensor):
        """``reg_loss_weight * sum_pos t (1 - GIoU) / sum t`` and ``sum_pos BCE(logit, t) / num_pos``
        (both 0, keeping the graph, when the all-reduced ``sum t`` is below ``WEIGHT_EPS``).

        Computed on every prior with fixed shapes: non-positives have weight 0 and zeroed inputs
        (deltas 0, target the anchor itself), so nothing non-finite reaches the sums or gradients.

        Args:
            bbox_reg: Tensor[B, N, 4]; quality_logits: Tensor[B, N]; anchors: Tensor[N, 4];
            target: Tensor[B, N] the quality target ``t`` (0 where not positive);
            num_pos: the all-reduced positive count (0-dim tensor).
        """
        pos = assignment.pos
        t_sum = reduce_mean_count(target.sum(), device=target.device, min_value=0.0)
        boxes = self.box_coder.decode(torch.where(pos[..., None], bbox_reg.float(), 0), anchors)
        loss_reg = giou_loss(boxes.reshape(-1, 4), positive_boxes(assignment, anchors).reshape(-1, 4),
                             weight=target.reshape(-1), plus_one=self.legacy_plus_one)
        loss_q = F.binary_cross_entropy_with_logits(
            torch.where(pos, quality_logits.float(), 0), target, weight=pos.float(), reduction="sum")
        return (where_weighted(t_sum, self.reg_loss_weight * loss_reg / t_sum.clamp(min=WEIGHT_EPS)),
                where_weighted(t_sum, loss_q / num_pos))


def build_atss_parts(cfg, in_channels: int, node: str = "ATSS", anchor_node: Optional[str] = None):
    """(head, anchor_generator, box_coder, post_processor, score_rule) from ``cfg.MODEL.<node>``
    (default ``MODEL.ATSS``; shared by ATSS and Dynamic ATSS), the anchors of
    ``cfg.MODEL.<anchor_node>`` (default: ``node``) and ``MODEL.LEGACY_PLUS_ONE``.
    ``STRADDLE_THRESH`` is accepted and ignored."""
    a, anchors = cfg.MODEL[node], cfg.MODEL[anchor_node or node]
    legacy = legacy_plus_one_from_config(cfg)
    num_anchors = len(anchors.ASPECT_RATIOS) * anchors.SCALES_PER_OCTAVE
    head = ATSSHead(in_channels, check_num_classes(f"MODEL.{node}.NUM_CLASSES", a.NUM_CLASSES),
                    num_anchors, a.NUM_CONVS, num_levels=len(anchors.ANCHOR_STRIDES),
                    prior_prob=a.PRIOR_PROB, use_dcn_in_tower=a.USE_DCN_IN_TOWER,
                    regression_type=a.REGRESSION_TYPE, num_groups=cfg.MODEL.GROUP_NORM.NUM_GROUPS,
                    conv_bias=a.CONV_BIAS)
    anchor_generator = AnchorGenerator.from_config(cfg, anchor_node or node)
    box_coder = build_box_coder(a.REGRESSION_TYPE, a.BBOX_REG_WEIGHTS,
                                point_scale=anchors.ANCHOR_SIZES[0] / anchors.ANCHOR_STRIDES[0])
    post = DensePostProcessor(pre_nms_top_n=a.PRE_NMS_TOP_N, nms_thresh=a.NMS_TH,
                              detections_per_img=cfg.TEST.DETECTIONS_PER_IMG, legacy_plus_one=legacy)
    # threshold on sigmoid(cls); score sqrt(sigmoid(cls) * sigmoid(centerness))
    rule = ScoreRule(a.INFERENCE_TH, use_quality=True, transform=torch.sqrt)
    return head, anchor_generator, box_coder, post, rule


@DENSE_HEADS.register("ATSS", config_node="ATSS")
def build_atss(cfg, in_channels: int) -> DenseHead:
    """``"ATSS"`` from ``cfg.MODEL.ATSS`` (the only place these keys are read); the assigner of
    ``POSITIVE_TYPE`` (ATSS / SSC / TOPK / IoU)."""
    a = cfg.MODEL.ATSS
    head, anchor_generator, box_coder, post, rule = build_atss_parts(cfg, in_channels)
    loss = ATSSLoss(box_coder, gamma=a.LOSS_GAMMA, alpha=a.LOSS_ALPHA,
                    reg_loss_weight=a.REG_LOSS_WEIGHT,
                    legacy_plus_one=legacy_plus_one_from_config(cfg))
    return DenseHead(head, anchor_generator, build_assigner(cfg, "ATSS", "ATSS"), loss, post,
                     box_coder.decode, rule)
