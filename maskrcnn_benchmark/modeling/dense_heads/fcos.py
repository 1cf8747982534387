"""FCOS (Tian et al., ICCV 2019) as the ATSS codebase's baseline: the registered ``"FCOS"`` dense
head, and the FCOS-style point head shared with AutoAssign.

- Head: cls / box towers of ``num_convs`` x (3x3 conv with bias, GroupNorm, ReLU), optional DCN
  in the last tower conv; predictors ``C`` (cls), ``4`` (distances) and ``1`` (centerness, on the
  box tower with ``centerness_on_reg``, else on the cls tower). One ``Scale`` per level.
  Distances in pixels: ``relu(scale(x)) * stride`` with ``norm_reg_targets`` (the original
  trains on stride-normalised targets; IoU losses are scale invariant, so this is the same
  loss), else ``exp(scale(x))``.
- Points: cell centres (``x * s + s // 2``), :class:`~maskrcnn_benchmark.modeling.point_generator.PointGenerator`.
- Assignment: :class:`~maskrcnn_benchmark.modeling.assigners.FCOSAssigner` (scale ranges from
  ``SIZES_OF_INTEREST``, optional centre sampling, smallest GT wins).
- Losses: focal / num_pos; IoU loss (``IOU_LOSS_TYPE``: iou / linear_iou / giou) on decoded boxes
  weighted by the centerness target / sum of centerness targets; centerness BCE / num_pos
  (normalisers all-reduced and averaged per process).
- Inference: ``sigmoid(cls) > INFERENCE_TH``, top ``PRE_NMS_TOP_N`` per level by
  ``sigmoid(cls) * sigmoid(ctr)``, score ``sqrt`` of it, class-aware NMS at ``NMS_TH``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn_benchmark.layers import Scale, sigmoid_focal_loss
from maskrcnn_benchmark.layers.losses import iou_loss
from maskrcnn_benchmark.layers.padding_mask import masked_forward
from maskrcnn_benchmark.modeling.assigners import BatchAssignment, FCOSAssigner
from maskrcnn_benchmark.modeling.point_generator import (PointGenerator, distances_to_boxes,
                                                         points_as_boxes)

from .base import (WEIGHT_EPS, DenseHead, DenseOutputs, DensePostProcessor, ScoreRule,
                   check_num_classes, conv_tower, init_conv_std, per_level_masks, positive_boxes,
                   reduce_mean_count, where_weighted)
from .registry import DENSE_HEADS

__all__ = ["FCOSHead", "FCOSLoss", "build_fcos"]


class FCOSHead(nn.Module):
    """FCOS-style point head (one prediction per location).

    Args:
        in_channels: channels of every FPN level (and of the towers).
        num_classes: foreground classes C.
        strides: stride per level (one ``Scale`` each; distances are multiplied by it with
            ``norm_reg_targets``).
        num_convs: convs per tower.
        prior_prob: initial foreground probability of the cls bias.
        use_dcn_in_tower: last tower conv is a modulated deformable conv.
        centerness_on_reg: the centerness (AutoAssign: objectness) conv reads the box tower.
        norm_reg_targets: distances ``relu(scale(x)) * stride`` (else ``exp(scale(x))``).
        reg_bias_init: initial bias of the distance conv (0 for FCOS, 4 for AutoAssign).
        num_groups: GroupNorm groups in the towers (0: no norm).

    ``forward(features)`` returns three lists over levels: cls logits [B, C, H, W], distances
    ``(l, t, r, b)`` in pixels [B, 4, H, W] (>= 0), centerness logits [B, 1, H, W].
    """

    # first dimension C: not loaded from a checkpoint with another class count (fine-tuning)
    class_dependent_tensors = ("cls_logits.weight", "cls_logits.bias")

    @property
    def output_dims(self) -> Dict[str, int]:
        """Per-prior width of each branch of ``forward`` (the :class:`~.base.DenseConvHead` contract)."""
        return {"cls_logits": self.num_classes, "box_regression": 4, "quality": 1}

    def __init__(self, in_channels: int, num_classes: int,
                 strides: Sequence[int] = (8, 16, 32, 64, 128), num_convs: int = 4,
                 prior_prob: float = 0.01, use_dcn_in_tower: bool = False,
                 centerness_on_reg: bool = False, norm_reg_targets: bool = False,
                 reg_bias_init: float = 0.0, num_groups: int = 32):
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = 1
        self.strides = tuple(int(s) for s in strides)
        self.centerness_on_reg = centerness_on_reg
        self.norm_reg_targets = norm_reg_targets
        self.cls_tower = conv_tower(in_channels, num_convs, num_groups, use_dcn_in_tower)
        self.bbox_tower = conv_tower(in_channels, num_convs, num_groups, use_dcn_in_tower)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        init_conv_std([*self.cls_tower, *self.bbox_tower, self.cls_logits, self.bbox_pred,
                       self.centerness], std=0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(self.bbox_pred.bias, float(reg_bias_init))
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])

    def forward(self, features: Sequence[torch.Tensor],
                masks: Optional[Sequence[torch.Tensor]] = None):
        """features: per level [B, C, H_l, W_l]; masks: per level [B, 1, H_l, W_l] canvases
        (batch-invariant inference, :func:`~maskrcnn_benchmark.layers.padding_mask.masked_forward`)
        or None."""
        if len(features) != len(self.scales):
            raise ValueError(f"FCOSHead: {len(features)} feature levels, built for {len(self.scales)}")
        logits, distances, centerness = [], [], []
        for scale, stride, x, m in zip(self.scales, self.strides, features,
                                       per_level_masks(masks, features)):
            cls_t = masked_forward(self.cls_tower, x, m)
            box_t = masked_forward(self.bbox_tower, x, m)
            logits.append(masked_forward(self.cls_logits, cls_t, m))
            centerness.append(masked_forward(self.centerness, box_t if self.centerness_on_reg else cls_t, m))
            reg = scale(masked_forward(self.bbox_pred, box_t, m))
            distances.append(F.relu(reg) * stride if self.norm_reg_targets else torch.exp(reg))
        return logits, distances, centerness


class FCOSLoss:
    """Focal classification, centerness-weighted IoU regression and centerness BCE.

    Args:
        gamma, alpha: focal loss parameters.
        iou_loss_type: ``"iou"``, ``"linear_iou"`` or ``"giou"``.

    ``__call__(outputs, points_per_level (list of Tensor[N_l, 2]), targets, assignment)``
    (``outputs.box_regression``: distances [B, N, 4], ``outputs.quality``: centerness logits;
    ``assignment``: :class:`FCOSAssigner` on the points as zero-size boxes, its ``quality`` the
    centerness target) returns ``{"loss_cls", "loss_reg", "loss_centerness"}``.
    """

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25, iou_loss_type: str = "iou"):
        self.gamma = gamma
        self.alpha = alpha
        self.iou_loss_type = iou_loss_type

    def __call__(self, outputs: DenseOutputs, points_per_level: List[torch.Tensor],
                 targets, assignment: BatchAssignment) -> Dict[str, torch.Tensor]:
        logits, distances, centerness = outputs.cls_logits, outputs.box_regression, outputs.quality
        labels, ctr_t, pos = assignment.labels, assignment.quality, assignment.pos
        num_classes = logits.shape[-1]
        num_pos = reduce_mean_count(pos.sum(), device=logits.device)
        loss_cls = sigmoid_focal_loss(logits.reshape(-1, num_classes).float(), labels.reshape(-1),
                                      self.gamma, self.alpha).sum() / num_pos
        # every point, the non-positives weighted 0 (``ctr_t`` is 0 there) with zeroed inputs
        ctr_sum = reduce_mean_count(ctr_t.sum(), device=logits.device, min_value=0.0)
        points = torch.cat(points_per_level)
        boxes = distances_to_boxes(torch.where(pos[..., None], distances.float(), 0), points)
        target = positive_boxes(assignment, points_as_boxes(points))
        loss_reg = iou_loss(boxes.reshape(-1, 4), target.reshape(-1, 4), weight=ctr_t.reshape(-1),
                            loss_type=self.iou_loss_type)
        loss_ctr = F.binary_cross_entropy_with_logits(
            torch.where(pos, centerness.float(), 0), ctr_t, weight=pos.float(), reduction="sum")
        return {"loss_cls": loss_cls,
                "loss_reg": where_weighted(ctr_sum, loss_reg / ctr_sum.clamp(min=WEIGHT_EPS)),
                "loss_centerness": where_weighted(ctr_sum, loss_ctr / num_pos)}


@DENSE_HEADS.register("FCOS", config_node="FCOS")
def build_fcos(cfg, in_channels: int) -> DenseHead:
    """``"FCOS"`` from ``cfg.MODEL.FCOS``."""
    f = cfg.MODEL.FCOS
    num_classes = check_num_classes("MODEL.FCOS.NUM_CLASSES", f.NUM_CLASSES)
    head = FCOSHead(in_channels, num_classes, f.FPN_STRIDES, f.NUM_CONVS, f.PRIOR_PROB,
                    use_dcn_in_tower=f.USE_DCN_IN_TOWER, centerness_on_reg=f.CENTERNESS_ON_REG,
                    norm_reg_targets=f.NORM_REG_TARGETS,
                    num_groups=cfg.MODEL.GROUP_NORM.NUM_GROUPS)
    loss = FCOSLoss(gamma=f.LOSS_GAMMA, alpha=f.LOSS_ALPHA, iou_loss_type=f.IOU_LOSS_TYPE)
    post = DensePostProcessor(pre_nms_top_n=f.PRE_NMS_TOP_N, nms_thresh=f.NMS_TH,
                              detections_per_img=cfg.TEST.DETECTIONS_PER_IMG)
    # threshold on sigmoid(cls); score sqrt(sigmoid(cls) * sigmoid(centerness))
    rule = ScoreRule(f.INFERENCE_TH, use_quality=True, transform=torch.sqrt)
    return DenseHead(head, PointGenerator(f.FPN_STRIDES, offset=0.5), FCOSAssigner.from_config(cfg),
                     loss, post, distances_to_boxes, rule)
