"""Dynamic ATSS (Zhang et al., "Dynamic Label Assignment for Object Detection by Combining
Predicted and Anchor IoUs"): the ATSS head, anchors, coder and post-processing with

- assignment on ``P + Q`` (IoU of the detached decoded prediction + IoU of the anchor) by
  :class:`~maskrcnn_benchmark.modeling.assigners.DynamicATSSAssigner`,
- a quality focal loss whose soft target ``q`` is ``P`` with the assigned GT,
- a ``q``-weighted GIoU regression loss, and an IoU branch (the ``centerness`` conv) trained with
  BCE towards ``q``; at inference it plays the centerness role in the score.
"""
from __future__ import annotations

from typing import Dict, List

import torch

from maskrcnn_benchmark.layers.losses import quality_focal_loss
from maskrcnn_benchmark.modeling.assigners import BatchAssignment, build_assigner
from maskrcnn_benchmark.utils.legacy_plus_one import legacy_plus_one_from_config

from .atss import ATSSLoss, build_atss_parts
from .base import DenseHead, DenseOutputs, reduce_mean_count
from .registry import DENSE_HEADS

__all__ = ["DynamicATSSLoss", "build_dynamic_atss"]


class DynamicATSSLoss(ATSSLoss):
    """Losses of Dynamic ATSS (``alpha`` is unused; ``gamma`` is the quality focal exponent).

    ``__call__(outputs, anchors_per_level, targets, assignment)`` (``outputs.quality``: the IoU
    logits [B, N]; ``assignment`` from :class:`DynamicATSSAssigner` on the decoded predictions)
    returns ``{"loss_cls", "loss_reg", "loss_iou"}``:

    - ``loss_cls = QFL(logits, labels, q, gamma) / num_pos``,
    - ``loss_reg = reg_loss_weight * sum_pos q * (1 - GIoU) / sum_pos q``,
    - ``loss_iou = sum_pos BCE(iou_logit, q) / num_pos``,

    with ``num_pos`` and ``sum q`` all-reduced and averaged per process; ``num_pos`` at least 1,
    and a ``sum q`` below 1e-6 takes the no-positive path (zero losses that keep the graph).
    ``legacy_plus_one``: the release's GIoU areas (``giou_loss(plus_one=)``); its ``q`` (an IoU with
    "+1" areas on inclusive boxes) is the continuous IoU, so the assigner's ``quality`` needs no switch.
    """

    def __call__(self, outputs: DenseOutputs, anchors_per_level: List[torch.Tensor],
                 targets, assignment: BatchAssignment) -> Dict[str, torch.Tensor]:
        logits, bbox_reg, iou_logits = outputs.cls_logits, outputs.box_regression, outputs.quality
        labels, quality, pos = assignment.labels, assignment.quality, assignment.pos
        anchors = torch.cat(anchors_per_level)
        num_classes = logits.shape[-1]
        num_pos = reduce_mean_count(pos.sum(), device=logits.device)
        loss_cls = quality_focal_loss(logits.reshape(-1, num_classes).float(), labels.reshape(-1),
                                      quality.reshape(-1), gamma=self.gamma) / num_pos

        loss_reg, loss_iou = self.box_and_quality_losses(bbox_reg, iou_logits, anchors, assignment,
                                                         quality, num_pos)
        return {"loss_cls": loss_cls, "loss_reg": loss_reg, "loss_iou": loss_iou}


@DENSE_HEADS.register("DYNAMIC_ATSS", config_node="ATSS")
def build_dynamic_atss(cfg, in_channels: int) -> DenseHead:
    """``"DYNAMIC_ATSS"`` from ``cfg.MODEL.ATSS`` (same keys as ATSS; POSITIVE_TYPE is ignored)."""
    a = cfg.MODEL.ATSS
    head, anchor_generator, box_coder, post, rule = build_atss_parts(cfg, in_channels)
    loss = DynamicATSSLoss(box_coder, gamma=a.LOSS_GAMMA, alpha=a.LOSS_ALPHA,
                           reg_loss_weight=a.REG_LOSS_WEIGHT,
                           legacy_plus_one=legacy_plus_one_from_config(cfg))
    return DenseHead(head, anchor_generator, build_assigner(cfg, "DYNAMIC_ATSS", "ATSS"), loss, post,
                     box_coder.decode, rule)
