"""AutoAssign (Zhu et al., 2020; mmdetection's ``autoassign_r50-caffe_fpn_1x_coco``): the
registered ``"AUTOASSIGN"`` dense head.

The FCOS point head (:class:`~.fcos.FCOSHead`: GN towers with conv bias, cls bias prior 0.02,
distance bias 4, ``relu(scale(x)) * stride``, the 1-channel map on the box tower is the
*implicit objectness*) on points without the half-stride offset, trained with
label-assignment-free weighting:

- Centre prior (:class:`CenterPrior`): learnable per-class ``mu`` (C x 2, init 0) and ``sigma``
  (C x 2, init 1); ``G = prod_{x,y} exp(-((p - c_gt) / stride - mu)^2 / (2 sigma^2))`` for points
  inside the GT box, 0 outside.
- Positive: ``p_loc = exp(-reg_weight * (1 - GIoU))`` (reg_weight 5), ``p_cls = sigmoid(cls) *
  sigmoid(obj)`` at the GT class, ``p_pos = p_cls * p_loc``; confidence ``C = exp(3 p_pos)``;
  ``w+ = C G / sum(C G)`` over the instance's points; ``L_pos = BCE(sum w+ p_pos, 1)`` summed
  over GTs, x 0.25, / total number of GTs.
- Negative: for points inside GTs, ``f = 1 / (1 - IoU_pred)`` (detached; the IoU of the
  prediction with the GT it overlaps most), min-max normalised over each instance's points;
  ``w- = 1 - f`` at that GT's class, 1 elsewhere; ``x = sigmoid(cls) * sigmoid(obj) * w-``;
  ``L_neg = sum x^2 BCE(x, 0)``, x 0.75, / max(sum G, 1).
- Centre loss: mean over images of ``num_gt / sum G`` (``num_gt`` counts every GT of the image,
  also one with no point inside, as mmdetection and shared/ALGORITHMS.md; an image where no point
  is inside any GT adds 0), x 0.75.

Numerical choices (documented deviations from the reference, identical in exact arithmetic):

- ``log(sum w+ p_pos)`` is computed in log space (``log G`` directly, ``logsigmoid`` of the
  logits, logsumexp over points), so a far-off or tiny ``G`` never underflows and saturated logits
  give finite losses and gradients.
- A GT with no point inside it (smaller than a stride; mmdetection's ``force_topk`` False) has no
  positive term (the reference adds a constant BCE(0, 1) = 100 with no gradient); it still counts
  in the centre loss numerator, as the reference. With ``force_topk`` its ``topk`` points of
  highest prior are used as its "inside" points, as mmdetection's option.
- A point inside several GTs of the same class takes the negative weight of the GT of highest
  index (the reference's write order).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn_benchmark.layers import elementwise_giou, elementwise_iou
from maskrcnn_benchmark.layers.losses import negative_bce
from maskrcnn_benchmark.modeling.assigners.base import unmatched_gt_stats
from maskrcnn_benchmark.modeling.point_generator import PointGenerator, distances_to_boxes
from maskrcnn_benchmark.structures.box_ops import box_centers, point_box_distances

from .base import (DenseHead, DenseOutputs, DensePostProcessor, ScoreRule, as_gt_batch,
                   check_num_classes, reduce_mean_count)
from .fcos import FCOSHead
from .registry import DENSE_HEADS

__all__ = ["CenterPrior", "AutoAssignLoss", "AutoAssignModule", "build_autoassign"]

_EPS = 1e-12


class CenterPrior(nn.Module):
    """Learnable per-class Gaussian centre prior.

    Args:
        num_classes: foreground classes C (parameters ``mean`` [C, 2] = 0, ``sigma`` [C, 2] = 1).
        strides: stride of each level (distances are measured in strides).
        force_topk, topk: a GT with no point inside gets its ``topk`` points of highest prior as
            inside points (off by default, as the reference config).
    """

    # first dimension C: not loaded from a checkpoint with another class count (fine-tuning)
    class_dependent_tensors = ("mean", "sigma")

    def __init__(self, num_classes: int, strides: Sequence[int] = (8, 16, 32, 64, 128),
                 force_topk: bool = False, topk: int = 9):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(num_classes, 2))
        self.sigma = nn.Parameter(torch.ones(num_classes, 2))
        self.strides = tuple(int(s) for s in strides)
        self.force_topk = bool(force_topk)
        self.topk = int(topk)

    def forward(self, points_per_level: Sequence[torch.Tensor], gt_boxes: torch.Tensor,
                gt_labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            points_per_level: list of Tensor[N_l, 2] ``(x, y)``; gt_boxes: Tensor[..., G, 4]
            (one image [G, 4] or a batch [B, G, 4]); gt_labels: Tensor[..., G] in 1..C (values
            below 1, e.g. padding, read class 1).
        Returns:
            log_prior: Tensor[..., N, G], ``log G`` (finite everywhere; callers mask with
            ``inside``);
            inside: Tensor[..., N, G] bool, point strictly inside the GT (or forced, see above).
        """
        lab = (gt_labels.to(torch.int64) - 1).clamp(min=0)
        mu, sigma = self.mean[lab][..., None, :, :], self.sigma[lab][..., None, :, :]  # [..., 1, G, 2]
        centers = box_centers(gt_boxes)[..., None, :, :]                         # [..., 1, G, 2]
        log_prior = []
        for pts, stride in zip(points_per_level, self.strides):
            d = (pts[:, None, :] - centers) / float(stride) - mu                 # [..., N_l, G, 2]
            log_prior.append(-(d.square() / (2 * sigma.square())).sum(dim=-1))
        log_prior = torch.cat(log_prior, dim=-2)                                 # [..., N, G]
        points = torch.cat(list(points_per_level))
        inside = point_box_distances(points[:, None, :], gt_boxes[..., None, :, :]).amin(dim=-1) > 0
        if self.force_topk:  # fixed shapes: computed always, used for the GTs with no inside point
            empty = ~inside.any(dim=-2, keepdim=True)                            # [..., 1, G]
            k = min(self.topk, points.shape[0])
            top = log_prior.detach().topk(k, dim=-2).indices                     # [..., k, G]
            forced = torch.zeros_like(inside).scatter_(-2, top, True)
            inside = inside | (forced & empty)
        return log_prior, inside


class AutoAssignLoss:
    """AutoAssign losses (see the module docstring).

    Args:
        center_prior: the :class:`CenterPrior` (its parameters live in the model).
        reg_weight: GIoU loss weight inside ``p_loc`` (5).
        pos_weight, neg_weight, center_weight: loss weights (0.25, 0.75, 0.75).
        confidence_scale: ``C = exp(confidence_scale * p_pos)`` (3).

    ``__call__(outputs, points_per_level (list of Tensor[N_l, 2]), targets, assignment=None)``
    (``outputs.box_regression``: distances [B, N, 4], ``outputs.quality``: objectness logits)
    returns ``{"loss_pos", "loss_neg", "loss_center"}`` (no assigner: the weights are its
    assignment).
    """

    #: config keys that give a GT without an inside point one (the "no positive" warning)
    tuning_keys = ("MODEL.AUTOASSIGN.FORCE_TOPK", "MODEL.AUTOASSIGN.FPN_STRIDES", "INPUT.MIN_SIZE_TRAIN")

    def __init__(self, center_prior: CenterPrior, reg_weight: float = 5.0, pos_weight: float = 0.25,
                 neg_weight: float = 0.75, center_weight: float = 0.75, confidence_scale: float = 3.0):
        self.center_prior = center_prior
        self.reg_weight = float(reg_weight)
        self.pos_weight = float(pos_weight)
        self.neg_weight = float(neg_weight)
        self.center_weight = float(center_weight)
        self.confidence_scale = float(confidence_scale)

    def positive_loss(self, logits: torch.Tensor, obj: torch.Tensor, pred_boxes: torch.Tensor,
                      gt_boxes: torch.Tensor, gt_labels: torch.Tensor, log_prior: torch.Tensor,
                      inside: torch.Tensor) -> torch.Tensor:
        """Sum over the GTs with at least one inside point of ``-log(sum w+ p_pos)``.

        Args:
            logits: Tensor[B, N, C]; obj: Tensor[B, N] objectness logits; pred_boxes:
            Tensor[B, N, 4]; gt_boxes: Tensor[B, G, 4]; gt_labels: Tensor[B, G] (1..C);
            log_prior, inside: Tensor[B, N, G] (``inside`` False for padding GTs).
        """
        b, n, _ = logits.shape
        g = gt_boxes.shape[1]
        has_point = inside.any(dim=1)                                            # [B, G]
        # a GT without an inside point is computed over every point (finite), then dropped
        use = inside | ~has_point[:, None, :]
        giou = elementwise_giou(pred_boxes[:, :, None, :], gt_boxes[:, None, :, :])  # [B, N, G]
        cls_col = (gt_labels.to(torch.int64) - 1).clamp(min=0)[:, None, :].expand(b, n, g)
        log_p_pos = (F.logsigmoid(logits.gather(2, cls_col)) + F.logsigmoid(obj)[..., None]
                     - self.reg_weight * (1 - giou))
        neg_inf = float("-inf")
        log_cg = torch.where(use, self.confidence_scale * log_p_pos.exp() + log_prior, neg_inf)
        log_w = log_cg - torch.logsumexp(log_cg, dim=1, keepdim=True)
        log_bag = torch.logsumexp(torch.where(use, log_w + log_p_pos, neg_inf), dim=1)  # [B, G]
        return -torch.where(has_point, log_bag, 0).sum()

    @staticmethod
    @torch.no_grad()
    def negative_weights(pred_boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                         inside: torch.Tensor, num_classes: int,
                         valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``w-`` per (point, class): Tensor[B, N, C], 1 except at the class of a GT containing
        the point, where it is ``1 - minmax_normalised(1 / (1 - IoU_pred))`` (see module
        docstring). ``pred_boxes`` [B, N, 4], ``gt_boxes`` [B, G, 4], ``gt_labels`` [B, G],
        ``inside`` [B, N, G], ``valid`` [B, G] (the real GTs; default all)."""
        b, n, _ = pred_boxes.shape
        g = gt_boxes.shape[1]
        iou = elementwise_iou(pred_boxes[:, :, None, :], gt_boxes[:, None, :, :])  # [B, N, G]
        if valid is not None:
            iou = torch.where(valid[:, None, :], iou, 0)
        f = (1.0 / (1.0 - iou.amax(dim=2)).clamp(min=_EPS))[..., None].expand_as(inside)
        f_min = torch.where(inside, f, float("inf")).amin(dim=1, keepdim=True)
        f_max = torch.where(inside, f, float("-inf")).amax(dim=1, keepdim=True)
        f_norm = (f - f_min + _EPS) / (f_max - f_min + _EPS)   # finite wherever ``inside``
        # per (point, class): the highest-index GT of that class containing the point
        cls = (gt_labels.to(torch.int64) - 1).clamp(min=0)[:, None, :]           # [B, 1, G]
        index = torch.arange(n, device=cls.device)[None, :, None] * num_classes + cls
        gt_index = torch.arange(g, device=cls.device).expand(b, n, g)
        last_gt = torch.full((b, n * num_classes), -1, dtype=torch.int64, device=cls.device)
        last_gt.scatter_reduce_(1, index.expand(b, n, g).reshape(b, -1),
                                torch.where(inside, gt_index, -1).reshape(b, -1), reduce="amax",
                                include_self=True)
        last_gt = last_gt.view(b, n, num_classes)
        weight = 1.0 - f_norm.gather(2, last_gt.clamp(min=0))
        return torch.where(last_gt >= 0, weight, 1.0).to(pred_boxes.dtype)

    def __call__(self, outputs: DenseOutputs, points_per_level: List[torch.Tensor],
                 targets, assignment: Optional[object] = None) -> Dict[str, torch.Tensor]:
        logits = outputs.cls_logits.float()
        distances, objectness = outputs.box_regression.float(), outputs.quality.float()
        points = torch.cat(list(points_per_level))
        num_classes = logits.shape[-1]
        gt = as_gt_batch(targets, points.device, points.dtype)
        pred = distances_to_boxes(distances, points)                             # [B, N, 4]
        log_prior, inside = self.center_prior(points_per_level, gt.boxes, gt.labels)
        inside = inside & gt.valid[:, None, :]                                   # [B, N, G]
        prior = torch.where(inside, log_prior.exp(), 0)
        num_gt = gt.valid.sum()
        loss_pos = self.pos_weight * self.positive_loss(
            logits, objectness, pred, gt.boxes, gt.labels, log_prior, inside
        ) / reduce_mean_count(num_gt, device=logits.device)
        w_neg = self.negative_weights(pred.detach(), gt.boxes, gt.labels, inside, num_classes,
                                      gt.valid)
        x = logits.sigmoid() * objectness.sigmoid()[..., None] * w_neg
        loss_neg = self.neg_weight * (x.square() * negative_bce(x)).sum() / reduce_mean_count(
            prior.detach().sum(), device=logits.device)
        # per image num_gt / sum G; 0 for an image where no point is inside any GT (as the
        # reference), with a graph to the prior's parameters
        prior_img = prior.sum(dim=(1, 2))                                        # [B]
        center = torch.where(inside.any(dim=2).any(dim=1),
                             gt.valid.sum(dim=1) / prior_img.clamp(min=_EPS), prior_img * 0)
        return {"loss_pos": loss_pos, "loss_neg": loss_neg,
                "loss_center": self.center_weight * center.mean()}

    def gt_stats(self, points_per_level: Sequence[torch.Tensor], targets) -> Dict[str, torch.Tensor]:
        """The GT statistics of :func:`~maskrcnn_benchmark.modeling.assigners.base.unmatched_gt_stats`:
        here a GT "without positive" is one with no inside point (no positive term)."""
        points = torch.cat(list(points_per_level))
        gt = as_gt_batch(targets, points.device, points.dtype)
        with torch.no_grad():
            _, inside = self.center_prior(points_per_level, gt.boxes, gt.labels)
        return unmatched_gt_stats(gt, inside.any(dim=1))


class AutoAssignModule(DenseHead):
    """:class:`DenseHead` that also owns the loss's :class:`CenterPrior` (parameters
    ``center_prior.mean`` / ``center_prior.sigma``); no assigner."""

    def __init__(self, head: FCOSHead, point_generator: PointGenerator, loss: "AutoAssignLoss",
                 post_processor: DensePostProcessor, score_rule: ScoreRule):
        super().__init__(head, point_generator, None, loss, post_processor, distances_to_boxes,
                         score_rule)
        self.center_prior = loss.center_prior


@DENSE_HEADS.register("AUTOASSIGN", config_node="AUTOASSIGN")
def build_autoassign(cfg, in_channels: int) -> AutoAssignModule:
    """``"AUTOASSIGN"`` from ``cfg.MODEL.AUTOASSIGN``."""
    a = cfg.MODEL.AUTOASSIGN
    num_classes = check_num_classes("MODEL.AUTOASSIGN.NUM_CLASSES", a.NUM_CLASSES)
    head = FCOSHead(in_channels, num_classes, a.FPN_STRIDES, a.NUM_CONVS, a.PRIOR_PROB,
                    centerness_on_reg=True, norm_reg_targets=True, reg_bias_init=4.0,
                    num_groups=cfg.MODEL.GROUP_NORM.NUM_GROUPS)
    prior = CenterPrior(num_classes, a.FPN_STRIDES, force_topk=a.FORCE_TOPK, topk=a.TOPK)
    loss = AutoAssignLoss(prior, reg_weight=a.REG_LOSS_WEIGHT, pos_weight=a.POS_LOSS_WEIGHT,
                          neg_weight=a.NEG_LOSS_WEIGHT, center_weight=a.CENTER_LOSS_WEIGHT)
    post = DensePostProcessor(pre_nms_top_n=a.PRE_NMS_TOP_N, nms_thresh=a.NMS_TH,
                              detections_per_img=cfg.TEST.DETECTIONS_PER_IMG)
    # threshold on sigmoid(cls); score sigmoid(cls) * sigmoid(objectness)
    rule = ScoreRule(a.INFERENCE_TH, use_quality=True)
    return AutoAssignModule(head, PointGenerator(a.FPN_STRIDES, offset=0.0), loss, post, rule)
