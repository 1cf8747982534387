"""The one dense-detector pipeline (detectron2 ``dense_detector`` style) and its shared helpers.

A detector supplies five parts; :class:`DenseHead` owns every step between them:

- ``head``: the conv module, a :class:`DenseConvHead` (the contract, checked when a
  :class:`DenseHead` is built): ``head(features) -> (cls [B, A*C, H, W], box [B, A*K, H, W]
  [, quality [B, A, H, W]][, extra branches])`` per level (lists over levels), with ``num_classes``
  (C), ``num_anchors`` (A), ``output_dims`` (the per-prior width of each branch, e.g. K = 4 box
  deltas, or GFL's ``4 * (reg_max + 1)`` bins) and ``class_dependent_tensors``;
- ``prior_generator``: ``prior_generator(features) -> list over levels of Tensor[N_l, D]`` priors
  shared by the images (anchors ``D = 4``, points ``D = 2``) and ``as_boxes(priors_l) ->
  Tensor[N_l, 4]`` (what the assigners read);
- ``assigner``: per-image assigner (``modeling/assigners``) or None for heads whose loss weighs
  every prior itself (FreeAnchor, AutoAssign);
- ``loss``: ``loss(outputs: DenseOutputs, priors: list[Tensor[N_l, D]], targets (a padded
  :class:`~maskrcnn_benchmark.modeling.assigners.GTBatch`, or per image BoxLists),
  assignment: BatchAssignment | None) -> dict of scalar losses``;
- ``decode(box_regression [..., K], priors [..., D]) -> boxes [..., 4]`` and a
  :class:`ScoreRule` (the final score and the candidate rule).

Training: the targets padded to one ``GTBatch`` (the GT count is read from the BoxLists' shapes on
the host), then :meth:`DenseHead.training_losses`: :meth:`DenseHead.flatten` ->
:meth:`DenseHead.priors` -> :meth:`DenseHead.assign` (``torch.no_grad``, the whole batch at once)
-> the loss. That step has fixed shapes and no host-device synchronisation (no ``nonzero``,
boolean-mask indexing or host read; the normalisers stay tensors), so it can be compiled whole
(``compile_step``). Inference: :meth:`DenseHead.predict` (traceable, fixed shapes) ->
:class:`DensePostProcessor` (per-level top-k, clip, class-aware NMS, top-N: fixed shapes, one NMS
call per batch, one device-to-host copy of the detections).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch
from torch import nn

from maskrcnn_benchmark.layers import DFConv2d, batched_nms
from maskrcnn_benchmark.modeling.assigners import (BatchAssignment, GTBatch, Predictions,
                                                   assign_batch, pad_targets)
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.box_ops import clip_boxes
from maskrcnn_benchmark.structures.image_list import ImageList
from maskrcnn_benchmark.utils.comm import get_world_size, reduce_sum

__all__ = ["DenseHead", "DenseConvHead", "check_head_contract", "DenseOutputs", "DensePrediction", "DensePostProcessor", "ScoreRule",
           "DenseCandidates", "DetectionBatch", "clip_boxes_to_images",
           "permute_and_flatten", "concat_levels", "reduce_mean_count", "init_conv_std",
           "conv_tower", "check_num_classes", "per_level_masks", "WEIGHT_EPS", "positive_boxes",
           "where_weighted", "as_gt_batch"]

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


def reduce_mean_count(value: torch.Tensor | float, device=None, min_value: float = 1.0) -> torch.Tensor:
    """All-reduced sum of ``value`` divided by the world size, at least ``min_value``.

    The normaliser of the dense losses: the average number of positives (or sum of weights)
    per process. Returns a float32 0-dim tensor (a tensor collective; never read on the host).
    """
    t = torch.as_tensor(value, device=device).to(torch.float32)
    return (reduce_sum(t) / get_world_size()).clamp(min=min_value)


def where_weighted(weight_sum: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` where ``weight_sum >= WEIGHT_EPS``, else ``0 * value`` (the "no positive" path
    of the losses: a zero that keeps the graph, chosen without a host read). ``value`` must be
    finite either way (divide by ``weight_sum.clamp(min=WEIGHT_EPS)``)."""
    return torch.where(weight_sum >= WEIGHT_EPS, value, value * 0)


def positive_boxes(assignment: BatchAssignment, prior_boxes: torch.Tensor) -> torch.Tensor:
    """Regression targets of every prior: the matched GT of positives, the prior box itself
    elsewhere (finite in every box formula; the losses weigh those rows 0).

    Args:
        assignment: the batch's assignment (``matched_gt`` [B, N, 4], ``pos`` [B, N]).
        prior_boxes: Tensor[N, 4].
    Returns:
        Tensor[B, N, 4].
    """
    matched = assignment.matched_gt
    return torch.where(assignment.pos[..., None], matched, prior_boxes.to(matched.dtype)[None])


def as_gt_batch(targets, device, dtype=torch.float32) -> GTBatch:
    """``targets`` as a :class:`GTBatch` on ``device`` (a list of BoxLists is padded)."""
    if isinstance(targets, GTBatch):
        return GTBatch(targets.boxes.to(device=device, dtype=dtype), targets.labels.to(device),
                       targets.valid.to(device))
    return pad_targets(targets, device=device, dtype=dtype)


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


# ---- the head contract ---------------------------------------------------------------------------
#: Branch names with a fixed meaning in :class:`DenseOutputs` (any other name is an extra branch).
CLS_BRANCH, BOX_BRANCH, QUALITY_BRANCH = "cls_logits", "box_regression", "quality"


@runtime_checkable
class DenseConvHead(Protocol):
    """What :class:`DenseHead` reads of its conv module (checked by :func:`check_head_contract`
    when a :class:`DenseHead` is built, so a registered head that breaks it fails at build time).

    Attributes:
        num_classes: foreground classes C (the classification branch has ``A * C`` channels).
        num_anchors: priors per feature-map location A (1 for point heads).
        output_dims: ordered mapping ``branch name -> per-prior width`` in the order ``forward``
            returns the branches (detectron2's ``dims_per_anchor``). The first is
            ``"cls_logits": C``, the second ``"box_regression": K`` (what ``decode`` reads: 4
            deltas / distances, or e.g. ``4 * (reg_max + 1)`` distribution bins); then optionally
            ``"quality": 1`` (centerness / IoU / objectness logits) and any extra branch of the
            head's own (carried in :attr:`DenseOutputs.extras` under its name).
        class_dependent_tensors: names (relative to the module) of the tensors whose first
            dimension depends on C: skipped when fine-tuning from a checkpoint with another class
            count (``utils/model_serialization.class_dependent_keys``). The classification
            predictor must be named ``cls_logits`` (``cls_logits.weight`` / ``.bias``), the name
            the checkpoints and the tests use.

    ``forward(features, masks=None)``: per level Tensor[B, C_in, H_l, W_l] (and optional per level
    canvases [B, 1, H_l, W_l]) -> one list over levels per branch, each Tensor[B, A * width,
    H_l, W_l]. The :class:`DenseHead` stores the module as ``head``; the detector stores the
    :class:`DenseHead` as ``rpn`` (checkpoint names ``rpn.head.*``, as the original releases).
    """

    num_classes: int
    num_anchors: int
    class_dependent_tensors: Tuple[str, ...]

    @property
    def output_dims(self) -> Mapping[str, int]: ...

    def forward(self, features: Sequence[torch.Tensor],
                masks: Optional[Sequence[torch.Tensor]] = None) -> Sequence[List[torch.Tensor]]: ...


def check_head_contract(head: nn.Module) -> None:
    """Raise ``TypeError`` naming what ``head`` lacks of :class:`DenseConvHead`."""
    name = type(head).__name__
    missing = [a for a in ("num_classes", "num_anchors", "output_dims", "class_dependent_tensors")
               if not hasattr(head, a)]
    if missing:
        raise TypeError(f"dense head {name} lacks {missing} of the DenseConvHead contract "
                        "(maskrcnn_benchmark/modeling/dense_heads/base.py)")
    dims = list(head.output_dims.items())
    if len(dims) < 2 or dims[0] != (CLS_BRANCH, head.num_classes) or dims[1][0] != BOX_BRANCH:
        raise TypeError(f"dense head {name}: output_dims must start with ('{CLS_BRANCH}', "
                        f"num_classes={head.num_classes}), ('{BOX_BRANCH}', K); got {dims}")
    if dict(dims).get(QUALITY_BRANCH, 1) != 1:
        raise TypeError(f"dense head {name}: the '{QUALITY_BRANCH}' branch has width 1, got {dims}")
    keys = set(head.state_dict().keys())
    unknown = [t for t in head.class_dependent_tensors if t not in keys]
    if not head.class_dependent_tensors or unknown:
        raise TypeError(f"dense head {name}: class_dependent_tensors {tuple(head.class_dependent_tensors)} "
                        f"must name tensors of the module (unknown: {unknown})")


# ---- data of one step --------------------------------------------------------------------------
@dataclass
class DenseOutputs:
    """The head's outputs, flattened over levels in prior order (``N = sum_l H_l * W_l * A``).

    Attributes:
        cls_logits: Tensor[B, N, C].
        box_regression: Tensor[B, N, K] (deltas or distances, K = 4, or distribution bins: as the
            decoder reads them).
        quality: Tensor[B, N] logits of the third branch (centerness / IoU / objectness), or None.
        extras: a head's other branches by name (``output_dims``), each Tensor[B, N, width].
    """

    cls_logits: torch.Tensor
    box_regression: torch.Tensor
    quality: Optional[torch.Tensor] = None
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)

    @staticmethod
    def from_branches(branches: Mapping[str, torch.Tensor]) -> "DenseOutputs":
        """Branch name -> Tensor[B, N, width] (the order of ``output_dims``) -> DenseOutputs (the
        quality branch squeezed to [B, N])."""
        quality = branches.get(QUALITY_BRANCH)
        return DenseOutputs(branches[CLS_BRANCH], branches[BOX_BRANCH],
                            None if quality is None else quality.squeeze(-1),
                            {k: v for k, v in branches.items()
                             if k not in (CLS_BRANCH, BOX_BRANCH, QUALITY_BRANCH)})


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
def clip_boxes_to_images(boxes: torch.Tensor, image_sizes: Sequence[Tuple[int, int]],
                         plus_one: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Boxes Tensor[B, M, 4] (x1, y1, x2, y2) clipped to their image, and which are non-empty.

    ``image_sizes``: per image ``(h, w)``. The rule is :func:`~maskrcnn_benchmark.structures.box_ops.clip_boxes`
    (continuous ``[0, w] x [0, h]``, or with ``plus_one`` the original releases' rule,
    ``MODEL.LEGACY_PLUS_ONE``). The limits are built on the boxes' device from the Python sizes by
    fills, so no host-to-device copy is made.

    Returns:
        (Tensor[B, M, 4] clipped boxes, Tensor[B, M] bool non-empty).
    """
    if len(image_sizes) != boxes.shape[0]:
        raise ValueError(f"clip_boxes_to_images: {len(image_sizes)} image sizes for a batch of "
                         f"{boxes.shape[0]}")
    wh = torch.stack([torch.cat([boxes.new_full((1,), float(w)), boxes.new_full((1,), float(h))])
                      for h, w in image_sizes])  # [B, 2]
    return clip_boxes(boxes, (wh[:, 0:1], wh[:, 1:2]), plus_one=plus_one)


@dataclass
class DenseCandidates:
    """The pre-NMS candidates of a batch: fixed shapes, on the model's device (the output of
    :meth:`DensePostProcessor.candidates`; ``M = sum_l min(pre_nms_top_n, N_l * C)``).

    Attributes:
        scores: Tensor[B, M] float32, >= 0 for a candidate and -1 in an empty slot (a (prior,
            class) pair below the threshold, or a box that is empty after clipping): empty slots
            are masked, never removed, so no shape depends on the data.
        boxes: Tensor[B, M, 4] float32, clipped to the image.
        labels: Tensor[B, M] int64 class in 1..C.
        image_sizes: per image ``(h, w)`` (the boxes' frame).
        num_classes: C.
    """

    scores: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    image_sizes: List[Tuple[int, int]]
    num_classes: int

    @staticmethod
    def cat(parts: Sequence["DenseCandidates"]) -> "DenseCandidates":
        """The images of several batches as one batch (e.g. the views of test-time augmentation);
        each part padded to the largest ``M`` with empty slots."""
        if not parts or len({p.num_classes for p in parts}) != 1:
            raise ValueError("DenseCandidates.cat: needs one or more parts with the same num_classes")
        m = max(p.scores.shape[1] for p in parts)

        def pad(t: torch.Tensor, value: float) -> torch.Tensor:
            extra = (t.shape[0], m - t.shape[1]) + tuple(t.shape[2:])
            return t if extra[1] == 0 else torch.cat([t, t.new_full(extra, value)], dim=1)

        return DenseCandidates(torch.cat([pad(p.scores, -1.0) for p in parts]),
                               torch.cat([pad(p.boxes, 0.0) for p in parts]),
                               torch.cat([pad(p.labels, 1) for p in parts]),
                               [s for p in parts for s in p.image_sizes], parts[0].num_classes)


@dataclass
class DetectionBatch:
    """Fixed-size detections of a batch, on the model's device (the output of
    :meth:`DensePostProcessor.select`; ``K = min(detections_per_img, M)``).

    Per image the detections come first, by decreasing score (ties: candidate order); the rows
    after them are padding with label 0, score 0 and a zero box.

    Attributes:
        boxes: Tensor[B, K, 4]; scores: Tensor[B, K] float32; labels: Tensor[B, K] int64 in 1..C
        (0: padding); image_sizes: per image ``(h, w)``.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    image_sizes: List[Tuple[int, int]]

    def to_boxlists(self) -> List[BoxList]:
        """Per image a BoxList on the CPU (size ``(w, h)``, fields ``scores`` float32 and
        ``labels`` int64), built on the host after ONE device-to-host copy of the whole batch
        (boxes, scores and labels packed in one tensor; labels < 2^24 are exact in float32)."""
        packed = torch.cat([self.boxes, self.scores[..., None].to(self.boxes.dtype),
                            self.labels[..., None].to(self.boxes.dtype)], dim=-1).cpu()
        counts = (packed[..., 5] > 0).sum(dim=1).tolist()  # host tensor: no device sync
        results = []
        for rows, n, (h, w) in zip(packed, counts, self.image_sizes):
            result = BoxList(rows[:n, :4], (int(w), int(h)))
            result.add_field("scores", rows[:n, 4].to(self.scores.dtype))
            result.add_field("labels", rows[:n, 5].to(torch.int64))
            results.append(result)
        return results


class DensePostProcessor:
    """Detections of every image from a :class:`DensePrediction`, with one host sync per batch.

    Per image and level the ``pre_nms_top_n`` best candidates (``candidate_mask``; a fixed-size
    top-k with the other slots masked); their boxes clipped to the image, empty boxes masked.
    Across levels: class-aware NMS at ``nms_thresh``, then the ``detections_per_img`` highest
    scores. Three steps (:meth:`__call__` chains them):

    - :meth:`candidates` -> :class:`DenseCandidates` (fixed shapes, no sync);
    - :meth:`select` -> :class:`DetectionBatch` (fixed shapes): ONE NMS call for the whole batch
      (the group of a candidate is ``image * C + class``, so images never suppress each
      other); on a GPU its kernel reads the number of kept boxes, the batch's one sync;
    - :meth:`DetectionBatch.to_boxlists`: one device-to-host copy, the BoxLists built on the host.

    An image's detections do not depend on the other images of the batch.

    ``legacy_plus_one``: clip and mask empty boxes as the original releases
    (:func:`~maskrcnn_benchmark.structures.box_ops.clip_boxes`, ``MODEL.LEGACY_PLUS_ONE``). Their NMS
    needs no switch: its "+1" areas and intersections on inclusive boxes are the continuous ones,
    and it suppresses at IoU ``>`` the threshold as :func:`~maskrcnn_benchmark.layers.batched_nms`.
    """

    def __init__(self, pre_nms_top_n: int = 1000, nms_thresh: float = 0.6,
                 detections_per_img: int = 100, legacy_plus_one: bool = False):
        self.pre_nms_top_n = int(pre_nms_top_n)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)
        self.legacy_plus_one = bool(legacy_plus_one)

    def __call__(self, prediction: DensePrediction,
                 image_sizes: Sequence[Tuple[int, int]]) -> List[BoxList]:
        """
        Args:
            prediction: the batch's candidates (scores must be >= 0).
            image_sizes: per image ``(h, w)`` of the (resized, unpadded) image.
        Returns:
            per image a BoxList on the CPU (size ``(w, h)``) with fields ``scores`` [K] and
            ``labels`` [K] int64 in 1..C, sorted by decreasing score, ``K <= detections_per_img``.
        """
        return self.select(self.candidates(prediction, image_sizes)).to_boxlists()

    def candidates(self, prediction: DensePrediction,
                   image_sizes: Sequence[Tuple[int, int]]) -> DenseCandidates:
        """Per image the ``pre_nms_top_n`` best (prior, class) pairs of each level (in (prior,
        class) order), levels concatenated; boxes clipped to the image, empty ones masked. No sync."""
        c = prediction.scores.shape[-1]
        scores, boxes, labels = [], [], []
        start = 0
        for n in prediction.level_sizes:
            top, idx = self._level_top(prediction.scores[:, start:start + n],
                                       prediction.candidate_mask[:, start:start + n])
            prior = torch.div(idx, c, rounding_mode="floor") + start
            scores.append(top)
            labels.append(idx % c + 1)
            boxes.append(prediction.boxes.gather(1, prior[..., None].expand(-1, -1, 4)))
            start += n
        boxes, nonempty = clip_boxes_to_images(torch.cat(boxes, dim=1), image_sizes, self.legacy_plus_one)
        scores = torch.cat(scores, dim=1).masked_fill(~nonempty, -1.0)
        return DenseCandidates(scores, boxes, torch.cat(labels, dim=1),
                               [tuple(int(v) for v in s) for s in image_sizes], c)

    def select(self, candidates: DenseCandidates) -> DetectionBatch:
        """Class-aware NMS of every image at once (:meth:`nms_keep_mask`), then per image the
        ``detections_per_img`` best kept candidates (a stable sort: ties keep candidate order).

        The empty slots share one group of their own with identical unit boxes, so the first
        suppresses the rest (``nms_thresh < 1``) and they cost the NMS kernels almost nothing;
        they are never reported.
        """
        scores, boxes, labels = candidates.scores, candidates.boxes, candidates.labels
        b, m = scores.shape
        valid = scores >= 0
        image = torch.arange(b, device=scores.device)[:, None]
        groups = torch.where(valid, image * candidates.num_classes + labels - 1,
                             b * candidates.num_classes)
        unit = (torch.arange(4, device=boxes.device) >= 2).to(boxes.dtype)  # (0, 0, 1, 1)
        keep = self.nms_keep_mask(torch.where(valid[..., None], boxes, unit).reshape(-1, 4),
                                  scores.reshape(-1), groups.reshape(-1)).view(b, m)
        ranked, order = torch.where(keep & valid, scores, -1.0).sort(dim=1, descending=True,
                                                                     stable=True)
        k = max(0, min(self.detections_per_img, m))
        ranked, order = ranked[:, :k], order[:, :k]
        found = ranked >= 0
        out_boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        return DetectionBatch(torch.where(found[..., None], out_boxes, 0.0),
                              torch.where(found, ranked, 0.0),
                              torch.where(found, labels.gather(1, order), 0),
                              list(candidates.image_sizes))

    def nms_keep_mask(self, boxes: torch.Tensor, scores: torch.Tensor,
                      groups: torch.Tensor) -> torch.Tensor:
        """Boxes Tensor[N, 4], scores Tensor[N], groups Tensor[N] int64 -> keep mask Tensor[N]
        bool of greedy NMS at ``nms_thresh`` within each group (:func:`batched_nms`).

        The only step of the inference with a data-dependent shape (the kept indices): on a GPU
        the NMS kernel reads their number on the host, the one sync of a batch. The mask has a
        fixed shape again.
        """
        keep = batched_nms(boxes, scores, groups, self.nms_thresh)
        return torch.zeros_like(scores, dtype=torch.bool).index_fill_(0, keep, True)

    def _level_top(self, scores: torch.Tensor, mask: torch.Tensor):
        """One level of every image: Tensor[B, N_l, C] scores / mask -> the ``pre_nms_top_n``
        best (prior, class) pairs per image in (prior, class) order: (scores [B, k] with -1 for
        non-candidates, flat indices ``prior * C + class`` [B, k]); one ``topk`` for the batch.
        The order makes ties in NMS and top-N independent of the ``topk`` kernel."""
        flat = scores.masked_fill(~mask, -1.0).flatten(1)
        k = min(self.pre_nms_top_n, flat.shape[1])
        top, idx = flat.topk(k, dim=1, sorted=False)
        idx, order = idx.sort(dim=1)
        return top.gather(1, order), idx


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
        decode: ``decode(box_regression [..., K], priors [..., D]) -> boxes [..., 4]``.
        score_rule: :class:`ScoreRule`.

    Subclasses may override a hook (:meth:`flatten`, :meth:`priors`, :meth:`assign`,
    :meth:`losses`, :meth:`predict`) but normally only pass their parts.
    """

    def __init__(self, head: nn.Module, prior_generator: nn.Module, assigner, loss,
                 post_processor: DensePostProcessor,
                 decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 score_rule: ScoreRule):
        super().__init__()
        check_head_contract(head)
        self.head = head
        self.prior_generator = prior_generator
        #: the GT statistics of the last training step (0-dim tensors, read by the hooks)
        self.step_metrics: Dict[str, torch.Tensor] = {}
        self.assigner = assigner
        self.loss_evaluator = loss
        self.post_processor = post_processor
        self.decode = decode
        self.score_rule = score_rule

    # -- steps ---------------------------------------------------------------------------------
    def flatten(self, raw: Sequence[Sequence[torch.Tensor]]) -> DenseOutputs:
        """The head's per-level outputs, one list per branch of ``head.output_dims`` ->
        :class:`DenseOutputs`."""
        dims = self.head.output_dims
        if len(raw) != len(dims):
            raise ValueError(f"{type(self.head).__name__} returned {len(raw)} branches, its "
                             f"output_dims declare {len(dims)}: {dict(dims)}")
        a = self.head.num_anchors
        return DenseOutputs.from_branches({name: concat_levels(levels, a, k)
                                           for (name, k), levels in zip(dims.items(), raw)})

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
               targets: "GTBatch | Sequence[BoxList]") -> Optional[BatchAssignment]:
        """:func:`assign_batch` of ``self.assigner`` on the whole batch (None without an
        assigner); the predictions are computed only for an assigner with ``needs_predictions``."""
        if self.assigner is None:
            return None
        predictions = None
        if getattr(self.assigner, "needs_predictions", False):
            predictions = self.assigner_predictions(outputs, priors)
        boxes = [self.prior_generator.as_boxes(p) for p in priors]
        return assign_batch(self.assigner, boxes, targets, predictions)

    def losses(self, outputs: DenseOutputs, priors: List[torch.Tensor],
               targets: "GTBatch | Sequence[BoxList]") -> Dict[str, torch.Tensor]:
        """Assignment then the loss function."""
        return self._losses_and_stats(outputs, priors, targets)[0]

    def _losses_and_stats(self, outputs, priors, targets):
        gt = as_gt_batch(targets, priors[0].device, priors[0].dtype)
        assignment = self.assign(outputs, priors, gt)
        losses = self.loss_evaluator(outputs, priors, gt, assignment)
        if assignment is not None:
            stats = assignment.stats
        elif hasattr(self.loss_evaluator, "gt_stats"):
            stats = self.loss_evaluator.gt_stats(priors, gt)
        else:
            stats = {}
        return losses, stats

    def training_losses(self, features: Sequence[torch.Tensor], gt: GTBatch,
                        masks: Optional[Sequence[torch.Tensor]] = None
                        ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """The training step of the head: conv module, priors, assignment, losses. Fixed shapes,
        no host-device synchronisation (what ``compile_step`` compiles whole).

        Args:
            features: per FPN level Tensor[B, C, H_l, W_l].
            gt: the batch's padded GTs.
            masks: per level Tensor[B, 1, H_l, W_l] canvases (``SOLVER.BATCH_INVARIANT``) or None.
        Returns:
            ``(losses, stats)``: dicts of 0-dim tensors; ``stats`` are the assignment's GT
            statistics (``num_gt``, ``num_gt_unmatched``, ``min_unmatched_size``; empty for heads
            without an assigner).
        """
        raw = self.head(features) if masks is None else self.head(features, masks)
        return self._losses_and_stats(self.flatten(raw), self.priors(features), gt)

    def compile_step(self, **compile_kwargs) -> "DenseHead":
        """``torch.compile(fullgraph=True)`` of :meth:`training_losses` (``MODEL.COMPILE_TRAIN_STEP``):
        one graph for the conv head, assignment and losses (0 graph breaks). Returns self."""
        compile_kwargs.setdefault("fullgraph", True)
        self._compiled_step = torch.compile(self.training_losses, **compile_kwargs)
        return self

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
            by ``decode`` of the box branch's K values per prior, candidate_mask [B, N, C]); computed level by level. The score rule and
            the decoding read the head's outputs in float32 (under autocast too), so scores,
            boxes and candidates are float32 whatever precision the convolutions ran in.
        """
        raw = self.head(features) if masks is None else self.head(features, masks)
        if priors is None:
            priors = self.priors(features)
        a, dims = self.head.num_anchors, self.head.output_dims
        scores, boxes, candidates = [], [], []
        for lvl, p in enumerate(priors):
            level = {name: concat_levels([branch[lvl]], a, k)
                     for (name, k), branch in zip(dims.items(), raw)}
            quality = level[QUALITY_BRANCH][..., 0].float() if QUALITY_BRANCH in level else None
            s, m = self.score_rule(level[CLS_BRANCH].float(), quality)
            if masks is not None:  # [B, 1, H, W] -> [B, H*W*A, 1] in prior order
                m = m & (concat_levels([masks[lvl].expand(-1, a, -1, -1)], a, 1) > 0)
            scores.append(s)
            candidates.append(m)
            boxes.append(self.decode(level[BOX_BRANCH].float(), p[None]))
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
            ``(list of BoxList on the CPU, {})`` in eval mode (one NMS call and one
            device-to-host copy for the batch, see :class:`DensePostProcessor`).
        """
        if self.training:
            if targets is None:
                raise ValueError(f"{type(self).__name__}: targets are required in training mode")
            if len(targets) != len(images.image_sizes):
                raise ValueError(f"{type(self).__name__}: {len(targets)} targets for "
                                 f"{len(images.image_sizes)} images")
            gt = pad_targets(targets, device=features[0].device)
            step = getattr(self, "_compiled_step", None) or self.training_losses
            losses, self.step_metrics = (step(features, gt) if masks is None
                                         else step(features, gt, masks))
            return None, losses
        return self.detect(self.candidates(images, features, masks)).to_boxlists(), {}

    @torch.no_grad()
    def candidates(self, images: ImageList, features: Sequence[torch.Tensor],
                   masks: Optional[Sequence[torch.Tensor]] = None) -> DenseCandidates:
        """Eval: the pre-NMS candidates of the batch (:meth:`predict`, then
        :meth:`DensePostProcessor.candidates` in float32); fixed shapes, on the device, no sync.
        ``masks``: per level canvases (see :meth:`predict`) or None."""
        prediction = self.predict(features, masks=masks).float()
        with torch.autocast(device_type=prediction.scores.device.type, enabled=False):
            return self.post_processor.candidates(prediction, images.image_sizes)

    @torch.no_grad()
    def detect(self, candidates: DenseCandidates) -> DetectionBatch:
        """Eval: NMS and top-N of every image of ``candidates`` (:meth:`DensePostProcessor.select`,
        one NMS call, float32); fixed-size detections on the device."""
        with torch.autocast(device_type=candidates.scores.device.type, enabled=False):
            return self.post_processor.select(candidates)
