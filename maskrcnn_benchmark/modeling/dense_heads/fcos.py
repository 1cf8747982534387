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
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn_benchmark.layers import DFConv2d, Scale, sigmoid_focal_loss
from maskrcnn_benchmark.layers.losses import iou_loss
from maskrcnn_benchmark.modeling.assigners import FCOSAssigner
from maskrcnn_benchmark.modeling.point_generator import (PointGenerator, distances_to_boxes,
                                                         points_as_boxes)
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList

from . import DENSE_HEADS
from .atss import _WEIGHT_EPS, ATSSLoss
from .base import DenseHead, DensePostProcessor, concat_levels, init_conv_std, reduce_mean_count
from .retinanet import check_num_classes

__all__ = ["FCOSHead", "FCOSLoss", "FCOSModule", "build_fcos"]


def _tower(in_channels: int, num_convs: int, use_dcn_last: bool, num_groups: int) -> nn.Sequential:
    """num_convs x (3x3 conv with bias, GroupNorm (if num_groups > 0), ReLU)."""
    layers: List[nn.Module] = []
    for i in range(num_convs):
        if use_dcn_last and i == num_convs - 1:
            layers.append(DFConv2d(in_channels, in_channels, kernel_size=3, stride=1, bias=True))
        else:
            layers.append(nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=True))
        if num_groups > 0:
            layers.append(nn.GroupNorm(num_groups, in_channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


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
        self.cls_tower = _tower(in_channels, num_convs, use_dcn_in_tower, num_groups)
        self.bbox_tower = _tower(in_channels, num_convs, use_dcn_in_tower, num_groups)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        init_conv_std([*self.cls_tower, *self.bbox_tower, self.cls_logits, self.bbox_pred,
                       self.centerness], std=0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(self.bbox_pred.bias, float(reg_bias_init))
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])

    def forward(self, features: Sequence[torch.Tensor]):
        if len(features) != len(self.scales):
            raise ValueError(f"FCOSHead: {len(features)} feature levels, built for {len(self.scales)}")
        logits, distances, centerness = [], [], []
        for scale, stride, x in zip(self.scales, self.strides, features):
            cls_t = self.cls_tower(x)
            box_t = self.bbox_tower(x)
            logits.append(self.cls_logits(cls_t))
            centerness.append(self.centerness(box_t if self.centerness_on_reg else cls_t))
            reg = scale(self.bbox_pred(box_t))
            distances.append(F.relu(reg) * stride if self.norm_reg_targets else torch.exp(reg))
        return logits, distances, centerness


class FCOSLoss:
    """Focal classification, centerness-weighted IoU regression and centerness BCE.

    Args:
        assigner: per-image assigner on points given as zero-size boxes (:class:`FCOSAssigner`);
            its ``quality`` is the centerness target.
        gamma, alpha: focal loss parameters.
        iou_loss_type: ``"iou"``, ``"linear_iou"`` or ``"giou"``.

    ``__call__(logits [B, N, C], distances [B, N, 4], centerness [B, N], points_per_level
    (list of Tensor[N_l, 2]), targets)`` returns ``{"loss_cls", "loss_reg", "loss_centerness"}``.
    """

    label_anchors = ATSSLoss.label_anchors  # the shared per-image assignment step

    def __init__(self, assigner, gamma: float = 2.0, alpha: float = 0.25, iou_loss_type: str = "iou"):
        self.assigner = assigner
        self.gamma = gamma
        self.alpha = alpha
        self.iou_loss_type = iou_loss_type

    def __call__(self, logits: torch.Tensor, distances: torch.Tensor, centerness: torch.Tensor,
                 points_per_level: List[torch.Tensor], targets: List[BoxList]) -> Dict[str, torch.Tensor]:
        boxes_per_level = [points_as_boxes(p) for p in points_per_level]
        labels, matched, ctr_t, pos = self.label_anchors(boxes_per_level, targets)
        num_classes = logits.shape[-1]
        num_pos = reduce_mean_count(pos.sum(), device=logits.device)
        loss_cls = sigmoid_focal_loss(logits.reshape(-1, num_classes).float(), labels.reshape(-1),
                                      self.gamma, self.alpha).sum() / num_pos
        ctr_t = ctr_t[pos]
        ctr_sum = reduce_mean_count(ctr_t.sum(), device=logits.device, min_value=0.0)
        if ctr_t.numel() == 0 or ctr_sum < _WEIGHT_EPS:
            return {"loss_cls": loss_cls, "loss_reg": distances.sum() * 0,
                    "loss_centerness": centerness.sum() * 0}
        points = torch.cat(points_per_level)[pos.nonzero(as_tuple=True)[1]]
        boxes = distances_to_boxes(distances[pos].float(), points)
        loss_reg = iou_loss(boxes, matched[pos], weight=ctr_t, loss_type=self.iou_loss_type) / ctr_sum
        loss_ctr = F.binary_cross_entropy_with_logits(centerness[pos].float(), ctr_t,
                                                      reduction="sum") / num_pos
        return {"loss_cls": loss_cls, "loss_reg": loss_reg, "loss_centerness": loss_ctr}


def _decode_point_boxes(distances: torch.Tensor, point_boxes: torch.Tensor) -> torch.Tensor:
    """Post-processor decode: Tensor[M, 4] distances, Tensor[M, 4] zero-size point boxes."""
    return distances_to_boxes(distances, point_boxes)


class FCOSModule(DenseHead):
    """A point head: :class:`FCOSHead`, points, a loss
    ``loss(logits [B, N, C], distances [B, N, 4], centerness [B, N], points_per_level, targets)``
    and a :class:`DensePostProcessor` (candidates ``sigmoid(cls) > score_thresh``, ranked by
    ``sigmoid(cls) * sigmoid(ctr)``; its ``score_transform`` gives the reported score).
    Used by ``"FCOS"`` (score ``sqrt``) and ``"AUTOASSIGN"`` (score = product).
    """

    def __init__(self, head: FCOSHead, point_generator: PointGenerator, loss,
                 post_processor: DensePostProcessor):
        super().__init__(head, loss, post_processor)
        self.point_generator = point_generator

    def flatten(self, logits, distances, centerness):
        """Per-level outputs -> Tensor[B, N, C], Tensor[B, N, 4], Tensor[B, N]."""
        return (concat_levels(logits, 1, self.head.num_classes), concat_levels(distances, 1, 4),
                concat_levels(centerness, 1, 1).squeeze(-1))

    def forward_train(self, images: ImageList, features: List[torch.Tensor],
                      targets: List[BoxList]) -> Dict[str, torch.Tensor]:
        outputs = self.flatten(*self.head(features))
        return self.loss_evaluator(*outputs, self.point_generator(images, features), targets)

    @torch.no_grad()
    def forward_test(self, images: ImageList, features: List[torch.Tensor]) -> List[BoxList]:
        logits, distances, ctr = self.head(features)
        c = self.head.num_classes
        cls_prob = [concat_levels([x], 1, c).sigmoid() for x in logits]
        ctr_prob = [concat_levels([x], 1, 1).sigmoid() for x in ctr]
        scores = [p * q for p, q in zip(cls_prob, ctr_prob)]
        mask = [p > self.post_processor.score_thresh for p in cls_prob]
        reg = [concat_levels([x], 1, 4) for x in distances]
        points = [points_as_boxes(p) for p in self.point_generator(images, features)]
        return self.post_processor(scores, reg, [points] * len(images.image_sizes),
                                   images.image_sizes, candidate_mask=mask)


@DENSE_HEADS.register("FCOS")
def build_fcos(cfg, in_channels: int) -> FCOSModule:
    """``"FCOS"`` from ``cfg.MODEL.FCOS``."""
    f = cfg.MODEL.FCOS
    num_classes = check_num_classes("MODEL.FCOS.NUM_CLASSES", f.NUM_CLASSES)
    head = FCOSHead(in_channels, num_classes, f.FPN_STRIDES, f.NUM_CONVS, f.PRIOR_PROB,
                    use_dcn_in_tower=f.USE_DCN_IN_TOWER, centerness_on_reg=f.CENTERNESS_ON_REG,
                    norm_reg_targets=f.NORM_REG_TARGETS,
                    num_groups=cfg.MODEL.GROUP_NORM.NUM_GROUPS)
    loss = FCOSLoss(FCOSAssigner.from_config(cfg), gamma=f.LOSS_GAMMA, alpha=f.LOSS_ALPHA,
                    iou_loss_type=f.IOU_LOSS_TYPE)
    post = DensePostProcessor(_decode_point_boxes, score_thresh=f.INFERENCE_TH,
                              pre_nms_top_n=f.PRE_NMS_TOP_N, nms_thresh=f.NMS_TH,
                              detections_per_img=cfg.TEST.DETECTIONS_PER_IMG,
                              score_transform=torch.sqrt)
    return FCOSModule(head, PointGenerator(f.FPN_STRIDES, offset=0.5), loss, post)
