"""The one dense-detector pipeline (detectron2 ``dense_detector`` style) and its shared helpers.

A detector supplies five parts; :class:`DenseHead` owns every step between them:

- ``head``: the conv module, ``head(features) -> (cls [B, A*C, H, W], box [B, A*4, H, W]
  [, quality [B, A, H, W]])`` per level (lists over levels), with attributes ``num_classes`` (C)
  and ``num_anchors`` (A);
- ``prior_generator``: ``prior_generator(features) -> list over levels of Tensor[N_l, D]`` priors
  shared by the images (anchors ``D = 4``, points ``D = 2``) and ``as_boxes(priors_l) ->
  Tensor[N_l, 4]`` (what the assigners read);
- ``assigner``: per-image assigner (``modeling/assigners``) or None for heads whose loss weighs
  every prior itself (FreeAnchor, AutoAssign);
- ``loss``: ``loss(outputs: DenseOutputs, priors: list[Tensor[N_l, D]], targets,
  assignment: BatchAssignment | None) -> dict of scalar losses``;
- ``decode(box_regression [..., 4], priors [..., D]) -> boxes [..., 4]`` and a
  :class:`ScoreRule` (the final score and the candidate rule).

Training: :meth:`DenseHead.flatten` -> :meth:`DenseHead.priors` -> :meth:`DenseHead.assign`
(``torch.no_grad``, :func:`~maskrcnn_benchmark.modeling.assigners.assign_batch`) ->
:meth:`DenseHead.losses`. Inference: :meth:`DenseHead.predict` (traceable, fixed shapes) ->
:class:`DensePostProcessor` (per-level top-k, clip, class-aware NMS, top-N).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from maskrcnn_benchmark.layers import DFConv2d, batched_nms
from maskrcnn_benchmark.modeling.assigners import BatchAssignment, Predictions, assign_batch
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList
from maskrcnn_benchmark.utils.comm import get_world_size, reduce_sum

__all__ = ["DenseHead", "DenseOutputs", "DensePrediction", "DensePostProcessor", "ScoreRule",
           "permute_and_flatten", "concat_levels", "reduce_mean_count", "init_conv_std",
           "conv_tower", "check_num_classes", "per_level_masks", "WEIGHT_EPS"]

#: Sums of regression weights (centerness / quality targets) below this are treated as "no
#: positive" by the losses (no division by ~0).
WEIGHT_EPS = 1e-6


# ---- helpers ------------------------------------------------------------------------------------
def permute_and_flatten(x: torch.Tensor, num_anchors: int, k: int) -> torch.Tensor:
    """Tensor[B, A*K, H, W] -> Tensor[B, H*W*A, K] (location-major, anchor-minor: the anchor order)."""
    b, _, h, w = x.shape
    return x.view(b, num_anchors, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * num_anchors, k)


def concat_levels(per_level: Sequence[torch.Tensor], num_anchors: int, k: int) -> torch.Tensor:
    """List over levels of Tensor[B, A*K, H_l, W_l] -> Tensor[B, sum_l H_l*W_l*A, K]."""
    return torch.cat([permute_and_flatten(x, num_anchors, k) for x in per_level], dim=1)


def reduce_mean_count(value: torch.Tensor | float, device=None, min_value: float = 1.0) -> float:
    """All-reduced sum of ``value`` divided by the world size, at least ``min_value``.

    The normaliser of the dense losses: the average number of positives (or sum of weights)
    per process.
    """
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    return max(float(reduce_sum(t)) / get_world_size(), min_value)


def init_conv_std(modules: Sequence[nn.Module], std: float = 0.01) -> None:
    """N(0, std) weights and zero bias for the plain ``nn.Conv2d`` among ``modules`` (not recursive,
    so a deformable conv keeps its own zero-offset initialisation)."""
    for m in modules:
        if type(m) is nn.Conv2d:
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)


def conv_tower(in_channels: int, num_convs: int, num_groups: int = 0,
               use_dcn_last: bool = False, bias: bool = True) -> nn.Sequential:
    """The tower of every dense head: ``num_convs`` x (3x3 conv with bias (unless ``bias`` is
    False), GroupNorm if ``num_groups > 0``, ReLU); the last conv a modulated deformable conv with
    ``use_dcn_last``.

    Module indices (checkpoint names): ``{3i}`` conv, ``{3i+1}`` GN, ``{3i+2}`` ReLU with GN;
    ``{2i}`` conv, ``{2i+1}`` ReLU without. A deformable conv keeps its own initialisation (zero
    offsets, mask 0.5); callers re-initialise only the plain convs (:func:`init_conv_std`).
    """
    layers: List[nn.Module] = []
    for i in range(num_convs):
        if use_dcn_last and i == num_convs - 1:
            layers.append(DFConv2d(in_channels, in_channels, kernel_size=3, stride=1, bias=bias))
        else:
            layers.append(nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1,
                                    bias=bias))
        if num_groups > 0:
            layers.append(nn.GroupNorm(num_groups, in_channels))
        # in place: neither the conv nor GroupNorm needs its output for backward
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def per_level_masks(masks: Optional[Sequence[torch.Tensor]],
                    features: Sequence[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    """The per-level canvas masks [B, 1, H_l, W_l] a head's ``forward`` got (batch-invariant
    inference), or one None per level of ``features`` without them."""
    if masks is None:
        return [None] * len(features)
    if len(masks) != len(features):
        raise ValueError(f"{len(masks)} padding masks for {len(features)} feature levels")
    return list(masks)


def check_num_classes(key: str, value: int) -> int:
    """Foreground classes from a ``NUM_CLASSES`` config value (foreground + 1); ``key`` names it
    in the error."""
    if value < 2:
        raise ValueError(f"{key} must be >= 2 (foreground + background), got {value}; "
                         "0 must be resolved from the dataset before building")
    return int(value) - 1


# ---- data of one step --------------------------------------------------------------------------
@dataclass
class DenseOutputs:
    """The head's outputs, flattened over levels in prior order (``N = sum_l H_l * W_l * A``).

    Attributes:
        cls_logits: Tensor[B, N, C].
        box_regression: Tensor[B, N, 4] (deltas or distances, as the decoder reads them).
        quality: Tensor[B, N] logits of the third branch (centerness / IoU / objectness), or None.
    """

    cls_logits: torch.Tensor
    box_regression: torch.Tensor
    quality: Optional[torch.Tensor] = None


@dataclass
class DensePrediction:
    """Every candidate of a batch, with fixed shapes (the output of :meth:`DenseHead.predict`).

    Attributes:
        scores: Tensor[B, N, C] final scores (reported as such).
        boxes: Tensor[B, N, 4] decoded boxes in input pixels (not clipped).
        candidate_mask: Tensor[B, N, C] bool, the (prior, class) pairs that may be reported.
        level_sizes: ``N_l`` per level (the per-level top-k of the post-processor).
    """

    scores: torch.Tensor
    boxes: torch.Tensor
    candidate_mask: torch.Tensor
    level_sizes: Tuple[int, ...]

    def float(self) -> "DensePrediction":
        """The same prediction with float32 scores and boxes (what the post-processor reads)."""
        return DensePrediction(self.scores.float(), self.boxes.float(), self.candidate_mask,
                               self.level_sizes)


class ScoreRule:
    """The score / candidate rule of a head.

    ``p = sigmoid(cls)``; the score is ``transform(p * sigmoid(quality))`` with ``use_quality``
    (ATSS, FCOS, AutoAssign) else ``transform(p)``; candidates have ``p > threshold``.

    Args:
        threshold: ``INFERENCE_TH``.
        use_quality: multiply by the sigmoid of the quality branch.
        transform: monotonic map of the score (``torch.sqrt`` for ATSS / FCOS); None = identity.
    """

    def __init__(self, threshold: float = 0.05, use_quality: bool = False,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.threshold = float(threshold)
        self.use_quality = bool(use_quality)
        self.transform = transform

    def __call__(self, cls_logits: torch.Tensor, quality_logits: Optional[torch.Tensor] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tensor[B, N, C] logits, Tensor[B, N] quality logits -> (scores [B, N, C],
        candidate_mask [B, N, C] bool)."""
        prob = cls_logits.sigmoid()
        mask = prob > self.threshold
        scores = prob * quality_logits.sigmoid()[..., None] if self.use_quality else prob
        if self.transform is not None:
            scores = self.transform(scores)
        return scores, mask


# ---- post-processing -----------------------------------------------------------------------------
class DensePostProcessor:
    """Detections of every image from a :class:`DensePrediction`.

    Per image and level: the candidates (``candidate_mask``), at most ``pre_nms_top_n`` of them
    ranked by score; their boxes clipped to the image and empty boxes dropped. Across levels:
    class-aware NMS at ``nms_thresh``, then the ``detections_per_img`` highest scores.
    """

    def __init__(self, pre_nms_top_n: int = 1000, nms_thresh: float = 0.6,
                 detections_per_img: int = 100):
        self.pre_nms_top_n = int(pre_nms_top_n)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)

    def __call__(self, prediction: DensePrediction,
                 image_sizes: Sequence[Tuple[int, int]]) -> List[BoxList]:
        """
        Args:
            prediction: the batch's candidates (scores must be >= 0).
            image_sizes: per image ``(h, w)`` of the (resized, unpadded) image.
        Returns:
            per image a BoxList (size ``(w, h)``) with fields ``scores`` [K] and ``labels`` [K]
            int64 in 1..C, sorted by decreasing score, ``K <= detections_per_img``.
        """
        num_classes = prediction.scores.shape[-1]
        levels = []  # per level: (top scores [B, k], (prior, class) flat indices [B, k], first prior)
        start = 0
        for n in prediction.level_sizes:
            levels.append(self._level_top(prediction.scores[:, start:start + n],
                                          prediction.candidate_mask[:, start:start + n]) + (start,))
            start += n
        results = []
        for i, (h, w) in enumerate(image_sizes):
            boxes, kept_scores, labels = [], [], []
            for top, idx, first in levels:
                top, idx = top[i], idx[i]
                keep = top >= 0
                top, idx = top[keep], idx[keep]
                prior_idx = torch.div(idx, num_classes, rounding_mode="floor")
                boxes.append(prediction.boxes[i, first + prior_idx])
                kept_scores.append(top.float())
                labels.append(idx % num_classes + 1)
            results.append(self._select(torch.cat(boxes), torch.cat(kept_scores), torch.cat(labels),
                                        image_wh=(int(w), int(h))))
        return results

    def _level_top(self, scores: torch.Tensor, mask: torch.Tensor):
        """One level of every image: Tensor[B, N_l, C] scores / mask -> the ``pre_nms_top_n``
        best (prior, class) pairs per image, unsorted: (scores [B, k] with -1 for non-candidates,
        flat indices ``prior * C + class`` [B, k]); one ``topk`` for the batch."""
        flat = scores.masked_fill(~mask, -1.0).flatten(1)
        k = min(self.pre_nms_top_n, flat.shape[1])
        return flat.topk(k, dim=1, sorted=False)

    def _select(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                image_wh: Tuple[int, int]) -> BoxList:
        """Clip to the ``(w, h)`` image, drop empty, class-aware NMS, top-N, sort."""
        w, h = image_wh
        boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                             boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[nonempty], scores[nonempty], labels[nonempty]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)
        order = scores[keep].argsort(descending=True)[: self.detections_per_img]
        keep = keep[order]
        result = BoxList(boxes[keep], image_wh)
        result.add_field("scores", scores[keep])
        result.add_field("labels", labels[keep].to(torch.int64))
        return result


# ---- the pipeline --------------------------------------------------------------------------------
class DenseHead(nn.Module):
    """One dense detector: conv module, priors, assignment, losses, prediction, post-processing.

    Args:
        head: conv module (see the module docstring); stored as ``head`` (checkpoint names
            ``rpn.head.*``).
        prior_generator: anchors or points per level (``AnchorGenerator`` / ``PointGenerator``).
        assigner: per-image assigner, or None (the loss assigns / weighs priors itself).
        loss: the loss function (stored as ``loss_evaluator``).
        post_processor: :class:`DensePostProcessor`.
        decode: ``decode(box_regression [..., 4], priors [..., D]) -> boxes [..., 4]``.
        score_rule: :class:`ScoreRule`.

    Subclasses may override a hook (:meth:`flatten`, :meth:`priors`, :meth:`assign`,
    :meth:`losses`, :meth:`predict`) but normally only pass their parts.
    """

    def __init__(self, head: nn.Module, prior_generator: nn.Module, assigner, loss,
                 post_processor: DensePostProcessor,
                 decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 score_rule: ScoreRule):
        super().__init__()
        self.head = head
        self.prior_generator = prior_generator
        self.assigner = assigner
        self.loss_evaluator = loss
        self.post_processor = post_processor
        self.decode = decode
        self.score_rule = score_rule

    # -- steps ---------------------------------------------------------------------------------
    def flatten(self, raw: Sequence[Sequence[torch.Tensor]]) -> DenseOutputs:
        """The head's per-level outputs ``(cls, box[, quality])`` -> :class:`DenseOutputs`."""
        a, c = self.head.num_anchors, self.head.num_classes
        quality = concat_levels(raw[2], a, 1).squeeze(-1) if len(raw) > 2 else None
        return DenseOutputs(concat_levels(raw[0], a, c), concat_levels(raw[1], a, 4), quality)

    def priors(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """List over levels of Tensor[N_l, D] (one set per level, shared by the images)."""
        return self.prior_generator(features)

    def assigner_predictions(self, outputs: DenseOutputs,
                             priors: Sequence[torch.Tensor]) -> Predictions:
        """Detached batched predictions for a prediction-aware assigner: ``boxes`` [B, N, 4]
        (decoded, float32) and ``scores`` [B, N, C] (class probabilities)."""
        with torch.no_grad():
            boxes = self.decode(outputs.box_regression.detach().float(), torch.cat(list(priors))[None])
            return Predictions(boxes=boxes, scores=outputs.cls_logits.detach().float().sigmoid())

    @torch.no_grad()
    def assign(self, outputs: DenseOutputs, priors: Sequence[torch.Tensor],
               targets: Sequence[BoxList]) -> Optional[BatchAssignment]:
        """:func:`assign_batch` of ``self.assigner`` over the images (None without an assigner);
        the predictions are computed only for an assigner with ``needs_predictions``."""
        if self.assigner is None:
            return None
        predictions = None
        if getattr(self.assigner, "needs_predictions", False):
            predictions = self.assigner_predictions(outputs, priors)
        boxes = [self.prior_generator.as_boxes(p) for p in priors]
        return assign_batch(self.assigner, boxes, targets, predictions)

    def losses(self, outputs: DenseOutputs, priors: List[torch.Tensor],
               targets: List[BoxList]) -> Dict[str, torch.Tensor]:
        """Assignment then the loss function."""
        assignment = self.assign(outputs, priors, targets)
        return self.loss_evaluator(outputs, priors, targets, assignment)

    def predict(self, features: Sequence[torch.Tensor],
                priors: Optional[Sequence[torch.Tensor]] = None,
                masks: Optional[Sequence[torch.Tensor]] = None) -> DensePrediction:
        """Scores and decoded boxes of every candidate; no data-dependent shape (traceable).

        Args:
            features: per level Tensor[B, C_in, H_l, W_l].
            priors: per level Tensor[N_l, D] (default: :meth:`priors` of the features).
            masks: per level Tensor[B, 1, H_l, W_l], each image's canvas (batch-invariant
                inference, :class:`~maskrcnn_benchmark.layers.padding_mask.PaddingMask`), or
                None; priors outside an image's canvas are then no candidates of it.
        Returns:
            :class:`DensePrediction` (scores [B, N, C] by the :class:`ScoreRule`, boxes [B, N, 4]
            by ``decode``, candidate_mask [B, N, C]); computed level by level. The score rule and
            the decoding read the head's outputs in float32 (under autocast too), so scores,
            boxes and candidates are float32 whatever precision the convolutions ran in.
        """
        raw = self.head(features) if masks is None else self.head(features, masks)
        if priors is None:
            priors = self.priors(features)
        a, c = self.head.num_anchors, self.head.num_classes
        scores, boxes, candidates = [], [], []
        for lvl, p in enumerate(priors):
            quality = concat_levels([raw[2][lvl]], a, 1)[..., 0].float() if len(raw) > 2 else None
            s, m = self.score_rule(concat_levels([raw[0][lvl]], a, c).float(), quality)
            if masks is not None:  # [B, 1, H, W] -> [B, H*W*A, 1] in prior order
                m = m & (concat_levels([masks[lvl].expand(-1, a, -1, -1)], a, 1) > 0)
            reg = concat_levels([raw[1][lvl]], a, 4)
            scores.append(s)
            candidates.append(m)
            boxes.append(self.decode(reg.float(), p[None]))
        return DensePrediction(torch.cat(scores, dim=1), torch.cat(boxes, dim=1),
                               torch.cat(candidates, dim=1), tuple(p.shape[0] for p in priors))

    # -- entry ---------------------------------------------------------------------------------
    def forward(self, images: ImageList, features: List[torch.Tensor],
                targets: Optional[List[BoxList]] = None,
                masks: Optional[Sequence[torch.Tensor]] = None):
        """
        Args:
            images: the padded batch (its ``image_sizes``, ``(h, w)`` each, bound the detections).
            features: per FPN level Tensor[B, C, H_l, W_l].
            targets: per image BoxList with a ``labels`` field (1..C); required in training.
            masks: per level Tensor[B, 1, H_l, W_l] canvases (see :meth:`predict`) or None.
        Returns:
            ``(detections, losses)``: ``(None, dict of scalar losses)`` in training,
            ``(list of BoxList, {})`` in eval mode.
        """
        if self.training:
            if targets is None:
                raise ValueError(f"{type(self).__name__}: targets are required in training mode")
            if len(targets) != len(images.image_sizes):
                raise ValueError(f"{type(self).__name__}: {len(targets)} targets for "
                                 f"{len(images.image_sizes)} images")
            raw = self.head(features) if masks is None else self.head(features, masks)
            return None, self.losses(self.flatten(raw), self.priors(features), targets)
        with torch.no_grad():
            prediction = self.predict(features, masks=masks).float()
            with torch.autocast(device_type=prediction.scores.device.type, enabled=False):
                return self.post_processor(prediction, images.image_sizes), {}
