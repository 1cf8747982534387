"""ATSS (Zhang et al., CVPR 2020): the conv head shared with Dynamic ATSS, its loss and the
registered ``"ATSS"`` dense head.

Parameter names follow the original release (``cls_tower.{i}``, ``bbox_tower.{i}``,
``cls_logits``, ``bbox_pred``, ``centerness``, ``scales.{l}.scale``) so its checkpoints load.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn_benchmark.layers import DFConv2d, Scale, sigmoid_focal_loss
from maskrcnn_benchmark.layers.losses import giou_loss
from maskrcnn_benchmark.modeling.anchor_generator import AnchorGenerator
from maskrcnn_benchmark.modeling.assigners import AssignResult, ATSSAssigner
from maskrcnn_benchmark.modeling.box_coder import build_box_coder
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.box_ops import box_centers
from maskrcnn_benchmark.structures.image_list import ImageList

from . import DENSE_HEADS
from .base import DenseHead, DensePostProcessor, concat_levels, init_conv_std, reduce_mean_count

__all__ = ["ATSSHead", "ATSSLoss", "ATSSModule", "centerness_targets", "flatten_outputs",
           "build_atss", "build_atss_parts"]

# Sums of regression weights below this are treated as "no positive" (no division by ~0).
_WEIGHT_EPS = 1e-6


def _tower(in_channels: int, num_convs: int, use_dcn_last: bool, num_groups: int) -> nn.Sequential:
    """num_convs x (3x3 conv with bias, GroupNorm, ReLU); the last conv deformable if asked.

    A deformable conv keeps its own initialisation (zero offsets, mask 0.5; its weight as
    ``ModulatedDeformConv`` sets it), as the original only re-initialised plain convs.
    """
    layers: List[nn.Module] = []
    for i in range(num_convs):
        if use_dcn_last and i == num_convs - 1:
            conv = DFConv2d(in_channels, in_channels, kernel_size=3, stride=1, bias=True)
        else:
            conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1, bias=True)
        layers += [conv, nn.GroupNorm(num_groups, in_channels), nn.ReLU()]
    return nn.Sequential(*layers)


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

    ``forward(features)`` takes per level Tensor[B, in_channels, H_l, W_l] and returns three lists
    over levels: cls logits [B, A*C, H, W], box regression [B, A*4, H, W] (after the level's
    ``Scale``) and centerness / IoU logits [B, A, H, W] (from the box tower).
    """

    def __init__(self, in_channels: int, num_classes: int, num_anchors: int = 1, num_convs: int = 4,
                 num_levels: int = 5, prior_prob: float = 0.01, use_dcn_in_tower: bool = False,
                 regression_type: str = "BOX", num_groups: int = 32):
        super().__init__()
        if regression_type not in ("BOX", "POINT"):
            raise ValueError(f"ATSSHead: regression_type must be 'BOX' or 'POINT', got {regression_type!r}")
        if regression_type == "POINT" and num_anchors != 1:
            raise ValueError(f"ATSSHead: POINT regression needs 1 anchor per location, got {num_anchors}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.regression_type = regression_type
        self.cls_tower = _tower(in_channels, num_convs, use_dcn_in_tower, num_groups)
        self.bbox_tower = _tower(in_channels, num_convs, use_dcn_in_tower, num_groups)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, num_anchors, 3, padding=1)
        init_conv_std([*self.cls_tower, *self.bbox_tower, self.cls_logits, self.bbox_pred,
                       self.centerness], std=0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        if regression_type == "POINT":
            nn.init.constant_(self.bbox_pred.bias, 4.0)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])

    def forward(self, features: Sequence[torch.Tensor]):
        if len(features) != len(self.scales):
            raise ValueError(f"ATSSHead: {len(features)} feature levels, built for {len(self.scales)}")
        logits, bbox_reg, centerness = [], [], []
        for scale, x in zip(self.scales, features):
            cls_t = self.cls_tower(x)
            box_t = self.bbox_tower(x)
            logits.append(self.cls_logits(cls_t))
            reg = scale(self.bbox_pred(box_t))
            bbox_reg.append(F.relu(reg) if self.regression_type == "POINT" else reg)
            centerness.append(self.centerness(box_t))
        return logits, bbox_reg, centerness


def centerness_targets(anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """FCOS centerness of anchor centres in their GT boxes.

    Args:
        anchors: Tensor[P, 4]; gt_boxes: Tensor[P, 4] (matched rows).
    Returns:
        Tensor[P] ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` in [0, 1]; centres on or
        outside a side give 0 (distances are clamped at 0, denominators at a tiny epsilon).
    """
    c = box_centers(anchors)
    l = (c[:, 0] - gt_boxes[:, 0]).clamp(min=0)
    t = (c[:, 1] - gt_boxes[:, 1]).clamp(min=0)
    r = (gt_boxes[:, 2] - c[:, 0]).clamp(min=0)
    b = (gt_boxes[:, 3] - c[:, 1]).clamp(min=0)
    lr = torch.minimum(l, r) / torch.maximum(l, r).clamp(min=1e-12)
    tb = torch.minimum(t, b) / torch.maximum(t, b).clamp(min=1e-12)
    return torch.sqrt(lr * tb)


def flatten_outputs(logits, bbox_reg, centerness, num_anchors: int, num_classes: int):
    """Per-level head outputs -> Tensor[B, N, C], Tensor[B, N, 4], Tensor[B, N] (anchor order)."""
    return (concat_levels(logits, num_anchors, num_classes),
            concat_levels(bbox_reg, num_anchors, 4),
            concat_levels(centerness, num_anchors, 1).squeeze(-1))


class ATSSLoss:
    """Focal classification + centerness-weighted GIoU regression + centerness BCE.

    Args:
        assigner: callable per image (see ``maskrcnn_benchmark.modeling.assigners``).
        box_coder: ``encode`` / ``decode`` of the regression outputs.
        gamma, alpha: focal loss parameters.
        reg_loss_weight: weight of the GIoU term.

    ``__call__(logits [B, N, C], bbox_reg [B, N, 4], centerness [B, N], anchors_per_level
    (list of Tensor[N_l, 4]), targets)`` returns ``{"loss_cls", "loss_reg", "loss_centerness"}``.
    Normalisers: the number of positives and the sum of the centerness targets, all-reduced and
    averaged per process (at least 1 / treated as "no positive" below 1e-6).
    """

    def __init__(self, assigner, box_coder, gamma: float = 2.0, alpha: float = 0.25,
                 reg_loss_weight: float = 2.0):
        self.assigner = assigner
        self.box_coder = box_coder
        self.gamma = gamma
        self.alpha = alpha
        self.reg_loss_weight = reg_loss_weight

    @torch.no_grad()
    def label_anchors(self, anchors_per_level: List[torch.Tensor], targets: List[BoxList],
                      pred_boxes: torch.Tensor | None = None) -> Tuple[torch.Tensor, torch.Tensor,
                                                                        torch.Tensor, torch.Tensor]:
        """Assigns every image.

        Returns:
            labels [B, N] int64 (1..C, 0, -1), matched_gt [B, N, 4] (zeros where not positive),
            quality [B, N], pos [B, N] bool.
        """
        results: List[AssignResult] = []
        matched = []
        for i, t in enumerate(targets):
            gt = t.bbox.to(anchors_per_level[0].device)
            res = self.assigner(anchors_per_level, gt, t.get_field("labels").to(gt.device),
                                None if pred_boxes is None else pred_boxes[i])
            results.append(res)
            m = torch.zeros(res.gt_inds.shape[0], 4, dtype=gt.dtype, device=gt.device)
            pos = res.pos_mask
            m[pos] = gt[res.gt_inds[pos]]
            matched.append(m)
        return (torch.stack([r.labels for r in results]), torch.stack(matched),
                torch.stack([r.quality for r in results]), torch.stack([r.pos_mask for r in results]))

    def __call__(self, logits: torch.Tensor, bbox_reg: torch.Tensor, centerness: torch.Tensor,
                 anchors_per_level: List[torch.Tensor], targets: List[BoxList]) -> Dict[str, torch.Tensor]:
        labels, matched, _, pos = self.label_anchors(anchors_per_level, targets)
        num_classes = logits.shape[-1]
        num_pos = reduce_mean_count(pos.sum(), device=logits.device)
        loss_cls = sigmoid_focal_loss(logits.reshape(-1, num_classes).float(), labels.reshape(-1),
                                      self.gamma, self.alpha).sum() / num_pos

        anchors = torch.cat(anchors_per_level)
        pos_anchor = pos.nonzero(as_tuple=True)[1]
        pos_anchors = anchors[pos_anchor]
        gt = matched[pos]
        ctr_t = centerness_targets(pos_anchors, gt)
        ctr_sum = reduce_mean_count(ctr_t.sum(), device=logits.device, min_value=0.0)
        if pos_anchor.numel() == 0 or ctr_sum < _WEIGHT_EPS:
            loss_reg = bbox_reg.sum() * 0
            loss_ctr = centerness.sum() * 0
        else:
            boxes = self.box_coder.decode(bbox_reg[pos].float(), pos_anchors)
            loss_reg = self.reg_loss_weight * giou_loss(boxes, gt, weight=ctr_t) / ctr_sum
            loss_ctr = F.binary_cross_entropy_with_logits(centerness[pos].float(), ctr_t,
                                                          reduction="sum") / num_pos
        return {"loss_cls": loss_cls, "loss_reg": loss_reg, "loss_centerness": loss_ctr}


class ATSSModule(DenseHead):
    """The ``"ATSS"`` dense head: conv head, anchors, ATSS assignment / loss, post-processing.

    Args:
        head: :class:`ATSSHead`.
        anchor_generator: :class:`AnchorGenerator` (one anchor set per level).
        loss: :class:`ATSSLoss` (or a subclass with the same call signature).
        post_processor: :class:`DensePostProcessor` (threshold on ``sigmoid(cls)``, ranked by
            ``sigmoid(cls) * sigmoid(ctr)``, score ``sqrt`` of it).
    """

    def __init__(self, head: ATSSHead, anchor_generator: AnchorGenerator, loss: ATSSLoss,
                 post_processor: DensePostProcessor):
        super().__init__(head, loss, post_processor)
        self.anchor_generator = anchor_generator

    def forward_train(self, images: ImageList, features: List[torch.Tensor],
                      targets: List[BoxList]) -> Dict[str, torch.Tensor]:
        logits, bbox_reg, ctr = flatten_outputs(*self.head(features), self.head.num_anchors,
                                                self.head.num_classes)
        anchors_per_level = self.anchor_generator(images, features)[0]
        return self.loss_evaluator(logits, bbox_reg, ctr, anchors_per_level, targets)

    @torch.no_grad()
    def forward_test(self, images: ImageList, features: List[torch.Tensor]) -> List[BoxList]:
        logits, bbox_reg, ctr = self.head(features)
        a, c = self.head.num_anchors, self.head.num_classes
        cls_prob = [concat_levels([x], a, c).sigmoid() for x in logits]
        ctr_prob = [concat_levels([x], a, 1).sigmoid() for x in ctr]
        scores = [p * q for p, q in zip(cls_prob, ctr_prob)]
        mask = [p > self.post_processor.score_thresh for p in cls_prob]
        reg = [concat_levels([x], a, 4) for x in bbox_reg]
        anchors = self.anchor_generator(images, features)
        return self.post_processor(scores, reg, anchors, images.image_sizes, candidate_mask=mask)


def build_atss_parts(cfg, in_channels: int):
    """(head, anchor_generator, box_coder, post_processor) from ``cfg.MODEL.ATSS``."""
    a = cfg.MODEL.ATSS
    num_anchors = len(a.ASPECT_RATIOS) * a.SCALES_PER_OCTAVE
    if a.NUM_CLASSES < 2:
        raise ValueError(f"MODEL.ATSS.NUM_CLASSES must be >= 2 (foreground + background), got "
                         f"{a.NUM_CLASSES}; 0 must be resolved from the dataset before building")
    head = ATSSHead(in_channels, a.NUM_CLASSES - 1, num_anchors, a.NUM_CONVS,
                    num_levels=len(a.ANCHOR_STRIDES), prior_prob=a.PRIOR_PROB,
                    use_dcn_in_tower=a.USE_DCN_IN_TOWER, regression_type=a.REGRESSION_TYPE,
                    num_groups=cfg.MODEL.GROUP_NORM.NUM_GROUPS)
    anchor_generator = AnchorGenerator(a.ANCHOR_SIZES, a.ASPECT_RATIOS, a.ANCHOR_STRIDES,
                                       a.SCALES_PER_OCTAVE, a.STRADDLE_THRESH)
    box_coder = build_box_coder(a.REGRESSION_TYPE, a.BBOX_REG_WEIGHTS,
                                point_scale=a.ANCHOR_SIZES[0] / a.ANCHOR_STRIDES[0])
    post = DensePostProcessor(box_coder.decode, score_thresh=a.INFERENCE_TH,
                              pre_nms_top_n=a.PRE_NMS_TOP_N, nms_thresh=a.NMS_TH,
                              detections_per_img=cfg.TEST.DETECTIONS_PER_IMG,
                              score_transform=torch.sqrt)
    return head, anchor_generator, box_coder, post


@DENSE_HEADS.register("ATSS")
def build_atss(cfg, in_channels: int) -> ATSSModule:
    """``"ATSS"`` from ``cfg.MODEL.ATSS`` (the only place these keys are read)."""
    a = cfg.MODEL.ATSS
    head, anchor_generator, box_coder, post = build_atss_parts(cfg, in_channels)
    loss = ATSSLoss(ATSSAssigner.from_config(cfg), box_coder, gamma=a.LOSS_GAMMA,
                    alpha=a.LOSS_ALPHA, reg_loss_weight=a.REG_LOSS_WEIGHT)
    return ATSSModule(head, anchor_generator, loss, post)
