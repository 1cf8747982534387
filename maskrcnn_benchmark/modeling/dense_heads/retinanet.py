"""RetinaNet (Lin et al., ICCV 2017) as the ATSS codebase trains it: the registered ``"RETINANET"``
dense head. Its conv head is shared with FreeAnchor.

- Head: separate cls / box towers of ``num_convs`` x (3x3 conv with bias, ReLU), no norm
  (optional GroupNorm after each tower conv with ``MODEL.RETINANET.USE_GN``, off by default:
  the reference head has none, but a head trained from scratch needs it, see
  :class:`RetinaNetHead`); predictors ``A * C`` and ``A * 4``. Init N(0, 0.01), bias 0, cls bias ``-log((1 - p) / p)``.
  Parameter names as the original (``cls_tower.{i}``, ``bbox_tower.{i}``, ``cls_logits``,
  ``bbox_pred``).
- Anchors: ``A = len(ASPECT_RATIOS) * SCALES_PER_OCTAVE`` per location, size
  ``ANCHOR_SIZES[l] * OCTAVE^(k / SCALES_PER_OCTAVE)`` (octave base scale 4 x stride for the defaults).
- Assignment: :class:`~maskrcnn_benchmark.modeling.assigners.MaxIoUAssigner` (0.5 / 0.4, low
  quality matches).
- Losses (as the ATSS release's RetinaNet): focal loss / (num_pos + images), smooth-L1
  (``beta`` 0.11) on the (10, 10, 5, 5) deltas / max(1, num_pos * ``BBOX_REG_WEIGHT``).
- Inference: ``sigmoid(cls) > INFERENCE_TH``, top ``PRE_NMS_TOP_N`` per level, decode, clip,
  class-aware NMS at ``NMS_TH``, top ``TEST.DETECTIONS_PER_IMG``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from maskrcnn_benchmark.layers import sigmoid_focal_loss
from maskrcnn_benchmark.layers.losses import smooth_l1_loss
from maskrcnn_benchmark.layers.padding_mask import masked_forward
from maskrcnn_benchmark.modeling.anchor_generator import AnchorGenerator
from maskrcnn_benchmark.modeling.assigners import BatchAssignment, MaxIoUAssigner
from maskrcnn_benchmark.modeling.box_coder import BoxCoder

from .base import (DenseHead, DenseOutputs, DensePostProcessor, ScoreRule, check_num_classes,
                   conv_tower, init_conv_std, per_level_masks, positive_boxes, reduce_mean_count)
from .registry import DENSE_HEADS

__all__ = ["RetinaNetHead", "RetinaNetLoss", "build_retinanet", "build_retinanet_parts"]


class RetinaNetHead(nn.Module):
    """Classification and box towers without normalisation.

    Args:
        in_channels: channels of every FPN level.
        num_classes: foreground classes C.
        num_anchors: anchors per location A.
        num_convs: 3x3 conv + ReLU layers per tower.
        prior_prob: initial foreground probability.
        num_groups: GroupNorm groups after each tower conv (0: no norm, the reference head).
            With N(0, 0.01) weights and no norm, each tower conv scales its input by about
            ``0.01 * sqrt(9 * in_channels)`` (0.24 for 64 channels), so at init the logits and
            deltas are nearly constant over positions and the gradients of the head and backbone
            nearly vanish. With a pretrained backbone (the reference setting) this trains; from
            scratch (GN backbone, the synthetic configs) it sits on that plateau and then
            explodes (RetinaNet: non-finite loss at iteration ~186) or escapes late
            (FreeAnchor). GroupNorm in the towers, as the from-scratch recipe of He et al.
            ("Rethinking ImageNet Pre-training") and the ATSS / FCOS heads have, removes this.

    ``forward(features)`` takes per level Tensor[B, in_channels, H_l, W_l] and returns two lists
    over levels: cls logits Tensor[B, A*C, H_l, W_l] and box deltas Tensor[B, A*4, H_l, W_l].
    """

    # first dimension A * C: not loaded from a checkpoint with another class count (fine-tuning)
    class_dependent_tensors = ("cls_logits.weight", "cls_logits.bias")

    @property
    def output_dims(self) -> Dict[str, int]:
        """Per-prior width of each branch of ``forward`` (the :class:`~.base.DenseConvHead` contract)."""
        return {"cls_logits": self.num_classes, "box_regression": 4}

    def __init__(self, in_channels: int, num_classes: int, num_anchors: int = 9, num_convs: int = 4,
                 prior_prob: float = 0.01, num_groups: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.cls_tower = conv_tower(in_channels, num_convs, num_groups)
        self.bbox_tower = conv_tower(in_channels, num_convs, num_groups)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        init_conv_std([*self.cls_tower, *self.bbox_tower, self.cls_logits, self.bbox_pred], 0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[torch.Tensor],
                masks: Optional[Sequence[torch.Tensor]] = None):
        """features: per level [B, C, H_l, W_l]; masks: per level [B, 1, H_l, W_l] canvases
        (batch-invariant inference, :func:`~maskrcnn_benchmark.layers.padding_mask.masked_forward`)
        or None."""
        levels = list(zip(features, per_level_masks(masks, features)))
        logits = [masked_forward(self.cls_logits, masked_forward(self.cls_tower, x, m), m)
                  for x, m in levels]
        bbox_reg = [masked_forward(self.bbox_pred, masked_forward(self.bbox_tower, x, m), m)
                    for x, m in levels]
        return logits, bbox_reg


class RetinaNetLoss:
    """Focal classification + smooth-L1 box regression on max-IoU assignment.

    Args:
        box_coder: :class:`BoxCoder` of the regression targets.
        gamma, alpha: focal loss parameters.
        beta: smooth-L1 transition point (in delta units).
        reg_norm: the regression sum is divided by ``max(1, num_pos * reg_norm)``
            (``MODEL.RETINANET.BBOX_REG_WEIGHT``, 4.0 in the original).

    ``__call__(outputs, anchors_per_level, targets, assignment)`` (a :class:`MaxIoUAssigner`
    assignment) returns ``{"loss_cls", "loss_reg"}``; ``num_pos`` is all-reduced and averaged per
    process.
    """

    def __init__(self, box_coder: BoxCoder, gamma: float = 2.0, alpha: float = 0.25,
                 beta: float = 0.11, reg_norm: float = 4.0):
        self.box_coder = box_coder
        self.gamma = gamma
        self.alpha = alpha
        self.beta = beta
        self.reg_norm = reg_norm

    def __call__(self, outputs: DenseOutputs, anchors_per_level: List[torch.Tensor],
                 targets, assignment: BatchAssignment) -> Dict[str, torch.Tensor]:
        logits, bbox_reg = outputs.cls_logits, outputs.box_regression
        labels, pos = assignment.labels, assignment.pos
        num_images, num_anchors, num_classes = logits.shape
        pos_count = pos.sum()
        cls_norm = reduce_mean_count(pos_count + num_images, device=logits.device)
        loss_cls = sigmoid_focal_loss(logits.reshape(-1, num_classes).float(), labels.reshape(-1),
                                      self.gamma, self.alpha).sum() / cls_norm
        num_pos = reduce_mean_count(pos_count, device=logits.device, min_value=0.0)
        # every anchor, the non-positives weighted 0 (target: the anchor itself, deltas 0)
        anchors = torch.cat(anchors_per_level)
        target = self.box_coder.encode(positive_boxes(assignment, anchors).reshape(-1, 4),
                                       anchors.repeat(num_images, 1))
        reg = smooth_l1_loss(torch.where(pos[..., None], bbox_reg.float(), 0).reshape(-1, 4), target,
                             beta=self.beta, reduction="none")
        loss_reg = (reg.sum(dim=1) * pos.reshape(-1)).sum() / (num_pos * self.reg_norm).clamp(min=1.0)
        return {"loss_cls": loss_cls, "loss_reg": loss_reg}


def build_retinanet_parts(cfg, in_channels: int):
    """(head, anchor_generator, box_coder, post_processor, score_rule) from
    ``cfg.MODEL.RETINANET`` and ``MODEL.LEGACY_PLUS_ONE`` (the original maskrcnn-benchmark RetinaNet's
    anchors, clipping and rescale; its box coder, matcher IoU and NMS equal the continuous ones)
    (shared with FreeAnchor). ``STRADDLE_THRESH`` is accepted and ignored."""
    from maskrcnn_benchmark.utils.legacy_plus_one import legacy_plus_one_from_config

    r = cfg.MODEL.RETINANET
    legacy = legacy_plus_one_from_config(cfg)
    num_classes = check_num_classes("MODEL.RETINANET.NUM_CLASSES", r.NUM_CLASSES)
    num_anchors = len(r.ASPECT_RATIOS) * r.SCALES_PER_OCTAVE
    head = RetinaNetHead(in_channels, num_classes, num_anchors, r.NUM_CONVS, r.PRIOR_PROB,
                         num_groups=cfg.MODEL.GROUP_NORM.NUM_GROUPS if r.USE_GN else 0)
    anchor_generator = AnchorGenerator.from_config(cfg, "RETINANET")
    box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    post = DensePostProcessor(pre_nms_top_n=r.PRE_NMS_TOP_N, nms_thresh=r.NMS_TH,
                              detections_per_img=cfg.TEST.DETECTIONS_PER_IMG, legacy_plus_one=legacy)
    rule = ScoreRule(r.INFERENCE_TH)  # score = threshold value = sigmoid(cls)
    return head, anchor_generator, box_coder, post, rule


@DENSE_HEADS.register("RETINANET", config_node="RETINANET")
def build_retinanet(cfg, in_channels: int) -> DenseHead:
    """``"RETINANET"`` from ``cfg.MODEL.RETINANET``."""
    r = cfg.MODEL.RETINANET
    head, anchor_generator, box_coder, post, rule = build_retinanet_parts(cfg, in_channels)
    loss = RetinaNetLoss(box_coder, gamma=r.LOSS_GAMMA, alpha=r.LOSS_ALPHA, beta=r.BBOX_REG_BETA,
                         reg_norm=r.BBOX_REG_WEIGHT)
    return DenseHead(head, anchor_generator, MaxIoUAssigner.from_config(cfg), loss, post,
                     box_coder.decode, rule)
