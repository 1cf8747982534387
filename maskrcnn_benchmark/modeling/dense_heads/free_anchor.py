"""FreeAnchor (Zhang et al., NeurIPS 2019): the registered ``"FREEANCHOR"`` dense head.

The RetinaNet head, anchors, box coder and post-processing (``MODEL.RETINANET.*``) trained with
the FreeAnchor "learning to match" losses (``MODEL.FREEANCHOR.*``):

- Bag of each GT: the ``bag_size`` (50) anchors of highest IoU(anchor, GT).
- Positive bag: ``P_cls`` = probability of the GT class, ``P_loc = exp(-reg_weight *
  SmoothL1_beta(deltas, targets))`` (summed over the 4 deltas); mean-max
  ``w = 1 / (1 - P)`` normalised over the bag, ``bag = sum w P`` with ``P = P_cls * P_loc``;
  ``L+ = alpha * BCE(bag, 1)`` summed over GTs / number of GTs.
- Saturated linear: ``P(a_j -> b_i) = clamp((IoU_ij - t1) / (t2 - t1), 0, 1)`` with
  ``IoU_ij`` the IoU of the (detached) *predicted* box of anchor j with GT i, ``t1`` =
  ``iou_threshold`` (0.6) and ``t2`` = GT i's highest such IoU (at least ``t1 + 1e-12``);
  ``P(a_j in A+)`` for class c = max over the GTs of class c.
- Negative: ``x = P_cls * (1 - P(a_j in A+))`` clamped to ``[eps, 1 - eps]``;
  ``L- = (1 - alpha) * x^gamma * BCE(x, 0)`` summed / (number of GTs * ``bag_size``).

Numerics: ``-log(bag)`` is computed in log space (``log P = logsigmoid(x) - loc``, a logsumexp
over the bag), so saturated logits give finite losses and gradients (the reference relies on
``binary_cross_entropy``'s clamp of the log at -100); ``BCE(x, 0)`` is ``-log(1 - x)`` with
``1 - x`` clamped at 1e-12. GT counts are all-reduced and averaged per process.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from maskrcnn_benchmark.layers.losses import negative_bce, smooth_l1_loss
from maskrcnn_benchmark.modeling.box_coder import BoxCoder
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.box_ops import pairwise_iou

from .base import DenseHead, DenseOutputs, reduce_mean_count
from .registry import DENSE_HEADS
from .retinanet import build_retinanet_parts

__all__ = ["FreeAnchorLoss", "build_free_anchor"]

_EPS = 1e-12


class FreeAnchorLoss:
    """FreeAnchor positive-bag and negative losses (see the module docstring).

    Args:
        box_coder: :class:`BoxCoder` (weights (10, 10, 5, 5)).
        bag_size: anchors per GT bag (50).
        iou_threshold: ``t1`` of the saturated linear function (0.6).
        alpha: weight of the positive loss; negatives get ``1 - alpha`` (0.5).
        gamma: focal exponent of the negative loss (2).
        beta: smooth-L1 beta of ``P_loc`` (0.11).
        reg_weight: factor of the smooth-L1 in ``P_loc = exp(-reg_weight * loss)`` (0.75).

    ``__call__(outputs, anchors_per_level, targets, assignment=None)`` returns
    ``{"loss_pos", "loss_neg"}`` (no assigner: the bags are its matching).
    """

    def __init__(self, box_coder: BoxCoder, bag_size: int = 50, iou_threshold: float = 0.6,
                 alpha: float = 0.5, gamma: float = 2.0, beta: float = 0.11,
                 reg_weight: float = 0.75):
        if bag_size < 1:
            raise ValueError(f"FreeAnchorLoss: bag_size must be >= 1, got {bag_size}")
        self.box_coder = box_coder
        self.bag_size = int(bag_size)
        self.iou_threshold = float(iou_threshold)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.beta = float(beta)
        self.reg_weight = float(reg_weight)

    @torch.no_grad()
    def positive_anchor_prob(self, pred_boxes: torch.Tensor, gt_boxes: torch.Tensor,
                             gt_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """``P(a_j in A+)`` per (anchor, class).

        Args:
            pred_boxes: Tensor[N, 4] decoded (detached) predictions; gt_boxes: Tensor[G, 4];
            gt_labels: Tensor[G] in 1..C.
        Returns:
            Tensor[N, C] in [0, 1] (0 for classes without a GT).
        """
        out = pred_boxes.new_zeros(num_classes, pred_boxes.shape[0])
        if gt_boxes.shape[0] == 0:
            return out.t()
        iou = pairwise_iou(gt_boxes, pred_boxes)                                 # [G, N]
        t1 = self.iou_threshold
        t2 = iou.amax(dim=1, keepdim=True).clamp(min=t1 + 1e-12)
        prob = ((iou - t1) / (t2 - t1)).clamp(0, 1)
        index = (gt_labels.to(torch.int64) - 1)[:, None].expand_as(prob)
        out.scatter_reduce_(0, index, prob, reduce="amax", include_self=True)
        return out.t()

    def bags(self, anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """Tensor[N, 4] anchors, Tensor[G, 4] GTs -> Tensor[G, K] anchor indices of each GT's bag
        (``K = min(bag_size, N)``, the anchors of highest IoU with the GT)."""
        with torch.no_grad():
            k = min(self.bag_size, anchors.shape[0])
            return pairwise_iou(gt_boxes, anchors).topk(k, dim=1).indices

    def positive_loss(self, logits: torch.Tensor, bbox_reg: torch.Tensor, anchors: torch.Tensor,
                      gt_boxes: torch.Tensor, gt_labels: torch.Tensor) -> torch.Tensor:
        """Sum over the GTs of one image of ``alpha * -log(mean-max bag probability)``.

        Args:
            logits: Tensor[N, C]; bbox_reg: Tensor[N, 4]; anchors: Tensor[N, 4];
            gt_boxes: Tensor[G, 4] (G >= 1); gt_labels: Tensor[G] in 1..C.
        """
        bag = self.bags(anchors, gt_boxes)                                       # [G, K]
        g, k = bag.shape
        cls_col = (gt_labels.to(torch.int64) - 1)[:, None].expand(g, k)
        log_p_cls = F.logsigmoid(logits[bag, cls_col])                          # [G, K]
        targets = self.box_coder.encode(gt_boxes[:, None, :].expand(g, k, 4).reshape(-1, 4),
                                        anchors[bag].reshape(-1, 4)).view(g, k, 4)
        loc = smooth_l1_loss(bbox_reg[bag], targets, beta=self.beta, reduction="none").sum(-1)
        log_p = log_p_cls - self.reg_weight * loc                                # log(P_cls P_loc)
        p = log_p.exp()
        log_w = -torch.log((1.0 - p).clamp(min=_EPS))                            # log(1 / (1 - P))
        log_bag = torch.logsumexp(log_w + log_p, dim=1) - torch.logsumexp(log_w, dim=1)
        return -self.alpha * log_bag.sum()

    def negative_loss(self, cls_prob: torch.Tensor, box_prob: torch.Tensor) -> torch.Tensor:
        """Sum of ``(1 - alpha) x^gamma BCE(x, 0)``, ``x = P_cls (1 - P(a in A+))`` clamped to
        ``[eps, 1 - eps]``. Tensors of the same shape ([B, N, C])."""
        x = (cls_prob * (1 - box_prob)).clamp(min=_EPS, max=1 - _EPS)
        return (1 - self.alpha) * (x.pow(self.gamma) * negative_bce(x)).sum()

    def __call__(self, outputs: DenseOutputs, anchors_per_level: List[torch.Tensor],
                 targets: List[BoxList], assignment: Optional[object] = None) -> Dict[str, torch.Tensor]:
        anchors = torch.cat(anchors_per_level)
        logits, bbox_reg = outputs.cls_logits.float(), outputs.box_regression.float()
        num_classes = logits.shape[-1]
        box_probs, pos_losses, num_gt = [], [], 0
        for i, t in enumerate(targets):
            gt, lab = self._gt(t, anchors)
            with torch.no_grad():
                pred = self.box_coder.decode(bbox_reg[i].detach(), anchors)
            box_probs.append(self.positive_anchor_prob(pred, gt, lab, num_classes))
            if gt.shape[0] > 0:
                pos_losses.append(self.positive_loss(logits[i], bbox_reg[i], anchors, gt, lab))
                num_gt += gt.shape[0]
        gt_norm = reduce_mean_count(num_gt, device=logits.device)
        if pos_losses:
            loss_pos = torch.stack(pos_losses).sum() / gt_norm
        else:
            loss_pos = bbox_reg.sum() * 0 + logits.sum() * 0
        neg_norm = reduce_mean_count(num_gt * self.bag_size, device=logits.device)
        loss_neg = self.negative_loss(logits.sigmoid(), torch.stack(box_probs)) / neg_norm
        return {"loss_pos": loss_pos, "loss_neg": loss_neg}

    @staticmethod
    def _gt(target: BoxList, anchors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        gt = target.bbox.to(device=anchors.device, dtype=anchors.dtype).reshape(-1, 4)
        return gt, target.get_field("labels").to(anchors.device)


@DENSE_HEADS.register("FREEANCHOR", config_node="RETINANET")
def build_free_anchor(cfg, in_channels: int) -> DenseHead:
    """``"FREEANCHOR"``: head / anchors / inference from ``cfg.MODEL.RETINANET``, losses from
    ``cfg.MODEL.FREEANCHOR``."""
    f = cfg.MODEL.FREEANCHOR
    head, anchor_generator, box_coder, post, rule = build_retinanet_parts(cfg, in_channels)
    loss = FreeAnchorLoss(box_coder, bag_size=f.BAG_SIZE, iou_threshold=f.IOU_THRESHOLD,
                          alpha=f.ALPHA, gamma=f.GAMMA, beta=f.BBOX_REG_BETA,
                          reg_weight=f.BBOX_REG_WEIGHT)
    return DenseHead(head, anchor_generator, None, loss, post, box_coder.decode, rule)
