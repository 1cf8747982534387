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

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from maskrcnn_benchmark.layers import box_iou
from maskrcnn_benchmark.layers.losses import negative_bce, smooth_l1_loss
from maskrcnn_benchmark.modeling.assigners import GTBatch
from maskrcnn_benchmark.modeling.box_coder import BoxCoder

from .base import DenseHead, DenseOutputs, as_gt_batch, reduce_mean_count
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
    def positive_anchor_prob(self, pred_boxes: torch.Tensor, gt: GTBatch,
                             num_classes: int) -> torch.Tensor:
        """``P(a_j in A+)`` per (image, anchor, class).

        Args:
            pred_boxes: Tensor[B, N, 4] decoded (detached) predictions; gt: the padded GTs.
        Returns:
            Tensor[B, N, C] in [0, 1] (0 for classes without a GT).
        """
        b, n, _ = pred_boxes.shape
        # the compiled pairwise IoU, image by image (a fixed number of calls)
        iou = torch.stack([box_iou(gt.boxes[i], pred_boxes[i]) for i in range(b)])  # [B, G, N]
        t1 = self.iou_threshold
        t2 = iou.amax(dim=2, keepdim=True).clamp(min=t1 + 1e-12)
        prob = torch.where(gt.valid[..., None], ((iou - t1) / (t2 - t1)).clamp(0, 1), 0)
        index = (gt.labels - 1).clamp(min=0)[..., None].expand_as(prob)
        out = pred_boxes.new_zeros(b, num_classes, n)
        out.scatter_reduce_(1, index, prob, reduce="amax", include_self=True)
        return out.transpose(1, 2)

    def bags(self, anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """Tensor[N, 4] anchors, Tensor[..., G, 4] GTs -> Tensor[..., G, K] anchor indices of each
        GT's bag (``K = min(bag_size, N)``, the anchors of highest IoU with the GT)."""
        with torch.no_grad():
            k = min(self.bag_size, anchors.shape[0])
            iou = box_iou(gt_boxes.reshape(-1, 4), anchors)
            return iou.view(*gt_boxes.shape[:-1], -1).topk(k, dim=-1).indices

    def positive_loss(self, logits: torch.Tensor, bbox_reg: torch.Tensor, anchors: torch.Tensor,
                      gt: GTBatch) -> torch.Tensor:
        """Sum over the real GTs of the batch of ``alpha * -log(mean-max bag probability)``.

        Args:
            logits: Tensor[B, N, C]; bbox_reg: Tensor[B, N, 4]; anchors: Tensor[N, 4];
            gt: the padded GTs (padding rows are computed, finite, and dropped).
        """
        bag = self.bags(anchors, gt.boxes)                                       # [B, G, K]
        b, g, k = bag.shape
        image = torch.arange(b, device=bag.device).view(b, 1, 1)
        cls_col = (gt.labels - 1).clamp(min=0)[..., None].expand(b, g, k)
        log_p_cls = F.logsigmoid(logits[image, bag, cls_col])                   # [B, G, K]
        targets = self.box_coder.encode(gt.boxes[:, :, None, :].expand(b, g, k, 4).reshape(-1, 4),
                                        anchors[bag].reshape(-1, 4)).view(b, g, k, 4)
        loc = smooth_l1_loss(bbox_reg[image, bag], targets, beta=self.beta,
                             reduction="none").sum(-1)
        log_p = log_p_cls - self.reg_weight * loc                                # log(P_cls P_loc)
        p = log_p.exp()
        log_w = -torch.log((1.0 - p).clamp(min=_EPS))                            # log(1 / (1 - P))
        log_bag = torch.logsumexp(log_w + log_p, dim=-1) - torch.logsumexp(log_w, dim=-1)
        return -self.alpha * torch.where(gt.valid, log_bag, 0).sum()

    def negative_loss(self, cls_prob: torch.Tensor, box_prob: torch.Tensor) -> torch.Tensor:
        """Sum of ``(1 - alpha) x^gamma BCE(x, 0)``, ``x = P_cls (1 - P(a in A+))`` clamped to
        ``[eps, 1 - eps]``. Tensors of the same shape ([B, N, C])."""
        x = (cls_prob * (1 - box_prob)).clamp(min=_EPS, max=1 - _EPS)
        return (1 - self.alpha) * (x.pow(self.gamma) * negative_bce(x)).sum()

    def __call__(self, outputs: DenseOutputs, anchors_per_level: List[torch.Tensor],
                 targets, assignment: Optional[object] = None) -> Dict[str, torch.Tensor]:
        anchors = torch.cat(anchors_per_level)
        logits, bbox_reg = outputs.cls_logits.float(), outputs.box_regression.float()
        num_classes = logits.shape[-1]
        gt = as_gt_batch(targets, anchors.device, anchors.dtype)
        with torch.no_grad():
            pred = self.box_coder.decode(bbox_reg.detach(), anchors)             # [B, N, 4]
        box_prob = self.positive_anchor_prob(pred, gt, num_classes)
        num_gt = gt.valid.sum()
        loss_pos = self.positive_loss(logits, bbox_reg, anchors, gt) / reduce_mean_count(
            num_gt, device=logits.device)
        neg_norm = reduce_mean_count(num_gt * self.bag_size, device=logits.device)
        loss_neg = self.negative_loss(logits.sigmoid(), box_prob) / neg_norm
        return {"loss_pos": loss_pos, "loss_neg": loss_neg}


@DENSE_HEADS.register("FREEANCHOR", config_node="RETINANET", reads=("FREEANCHOR",))
def build_free_anchor(cfg, in_channels: int) -> DenseHead:
    """``"FREEANCHOR"``: head / anchors / inference from ``cfg.MODEL.RETINANET``, losses from
    ``cfg.MODEL.FREEANCHOR``."""
    f = cfg.MODEL.FREEANCHOR
    head, anchor_generator, box_coder, post, rule = build_retinanet_parts(cfg, in_channels)
    loss = FreeAnchorLoss(box_coder, bag_size=f.BAG_SIZE, iou_threshold=f.IOU_THRESHOLD,
                          alpha=f.ALPHA, gamma=f.GAMMA, beta=f.BBOX_REG_BETA,
                          reg_weight=f.BBOX_REG_WEIGHT)
    return DenseHead(head, anchor_generator, None, loss, post, box_coder.decode, rule)
