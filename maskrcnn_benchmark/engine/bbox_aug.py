"""Test-time augmentation (TTA) for every dense detector: horizontal flip, several scales, and the
merge of the original ATSS / Dynamic ATSS releases (per-class NMS, box voting or soft voting).

It works with any detector whose ``model(images)`` in eval mode returns per image a
:class:`BoxList` (fields ``scores``, ``labels``) in the frame of the (resized) input image. Each
augmentation runs once on the whole batch; its boxes are mapped back exactly to the original
image: a flip is undone in the augmented frame (``x1' = w - x2``, ``x2' = w - x1``, no "+1"), then
the boxes are divided by the resize factors ``(w_aug / w, h_aug / h)``. A dense detector
(``model.candidates`` / ``model.detect``) runs every view's NMS in one call and copies all views'
detections to the host at once (:func:`detect_views_batched`: two host syncs per batch, whatever
the number of views); the mapping back and the merge run on the host.

Augmentations (``TEST.BBOX_AUG.*``, the original keys):

- the identity at ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST`` (always), and its mirror (``H_FLIP``);
- every shorter side of ``SCALES`` (longer side capped at ``MAX_SIZE``), mirrored too with
  ``SCALE_H_FLIP``; with ``SCALE_RANGES`` (one ``[lo, hi]`` per scale) a scale keeps only the boxes
  with ``lo^2 < w * h < hi^2`` measured in that scale's frame (large scales keep small objects).

Merge (per image, per class), then the ``TEST.DETECTIONS_PER_IMG`` best boxes are kept:

- ``VOTE False``: class-aware NMS at the head's ``NMS_TH`` (the original ``bbox_aug.py``);
- ``VOTE True``: ``MERGE_TYPE`` ``"nms"`` as above, ``"vote"`` (box voting: greedy clusters of
  IoU >= ``VOTE_TH`` around the best remaining box; a cluster becomes its score-weighted mean box
  with the cluster's best score), or ``"soft-vote"`` (voting, plus every other member of a
  cluster kept with its score times ``1 - IoU`` with the cluster's best box when that is at least
  the head's ``INFERENCE_TH``) (the original ``bbox_aug_vote.py``).

Differences from the original, on purpose: the detections merged are the detector's final ones
(after its own NMS) since the model's interface is used unchanged; every scale uses ``MAX_SIZE``
(the original silently switched to ``INPUT.MAX_SIZE_TEST`` below 800 px); boxes have no "+1"; the
result never exceeds ``TEST.DETECTIONS_PER_IMG`` boxes (the original kept ``PRE_NMS_TOP_N``, ties
included).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from maskrcnn_benchmark.data.transforms import transforms as T
from maskrcnn_benchmark.structures.bounding_box import FLIP_LEFT_RIGHT, BoxList
from maskrcnn_benchmark.layers import box_iou
from maskrcnn_benchmark.structures.box_ops import box_area
from maskrcnn_benchmark.structures.image_list import ImageList, to_image_list

__all__ = ["Augmentation", "BBoxAugmentor", "MERGE_TYPES", "build_bbox_augmentor",
           "detect_augmented", "detect_views_batched", "keep_size_range", "merge_detections",
           "box_voting", "soft_box_voting", "tta_input_transforms"]

logger = logging.getLogger(__name__)

MERGE_TYPES = ("nms", "vote", "soft-vote")


@dataclass(frozen=True)
class Augmentation:
    """One test-time view of an image.

    Attributes:
        min_size: shorter side in px after resizing.
        max_size: cap on the longer side in px (<= 0: no cap).
        hflip: mirror the resized image left-right.
        size_range: ``(lo, hi)`` in px or None; keep boxes with ``lo^2 < area < hi^2`` in this view's frame.
    """

    min_size: int
    max_size: int
    hflip: bool = False
    size_range: Optional[Tuple[float, float]] = None


def _batched_nms():
    from maskrcnn_benchmark.layers import batched_nms

    return batched_nms


def keep_size_range(boxes: Tensor, lo: float, hi: float) -> Tensor:
    """Boolean mask Tensor[N] of the boxes (Tensor[N, 4] xyxy) with ``lo^2 < area < hi^2`` (exclusive,
    as the original ``SCALE_RANGES``)."""
    area = box_area(boxes)
    return (area > float(lo) ** 2) & (area < float(hi) ** 2)


def box_voting(boxes: Tensor, scores: Tensor, labels: Tensor, vote_thresh: float,
               soft_score_thresh: Optional[float] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-class box voting (``soft_score_thresh`` None) or soft voting.

    Greedy clusters per class: the best remaining box takes every remaining box of its class with
    IoU >= ``vote_thresh``. The cluster heads are exactly the boxes NMS keeps, and a box belongs
    to the first (best) head it overlaps by >= ``vote_thresh``, so this is vectorised: one NMS, one
    head-vs-box IoU matrix. A cluster becomes the score-weighted mean of its boxes with the head's
    (the best) score. Soft voting also returns every non-head member with score
    ``score * (1 - IoU(member, head))`` when that is >= ``soft_score_thresh``.

    Args:
        boxes: Tensor[N, 4] xyxy; scores: Tensor[N] in (0, 1]; labels: Tensor[N] int64.
        vote_thresh: IoU threshold of a cluster, in (0, 1].
        soft_score_thresh: None for voting, else the score threshold of soft-vote members.

    Returns:
        ``(boxes Tensor[K, 4], scores Tensor[K], labels Tensor[K])``, sorted by decreasing score.
    """
    if boxes.numel() == 0:
        return boxes.reshape(0, 4), scores, labels
    # NMS suppresses at IoU > thresh while the clusters take IoU >= thresh: a tiny margin below the
    # threshold makes both the same (a box at exactly VOTE_TH joins the cluster, as in the original).
    thresh = float(vote_thresh) - 1e-6
    heads = _batched_nms()(boxes, scores, labels, thresh)
    same = labels[heads][:, None] == labels[None, :]
    iou = box_iou(boxes[heads], boxes).masked_fill(~same, -1.0)  # [H, N]
    member = iou > thresh
    # every box was suppressed by (or is) a head; guard against a last-ulp disagreement of the two IoUs
    # (such a box joins the head it overlaps most; no host sync)
    orphan = ~member.any(dim=0)
    cols = torch.arange(len(boxes), device=boxes.device)
    best = iou.argmax(dim=0)
    member[best, cols] = member[best, cols] | orphan
    cluster = member.to(torch.uint8).argmax(dim=0)  # first (best) head of each box, [N]
    weights = scores.to(boxes.dtype)
    sums = boxes.new_zeros((len(heads), 4)).index_add_(0, cluster, boxes * weights[:, None])
    norm = weights.new_zeros(len(heads)).index_add_(0, cluster, weights)
    out_boxes = sums / norm.clamp(min=torch.finfo(weights.dtype).tiny)[:, None]
    out_scores, out_labels = scores[heads], labels[heads]
    if soft_score_thresh is not None:
        is_head = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
        is_head[heads] = True
        own_iou = iou.gather(0, cluster[None])[0]
        soft = scores * (1.0 - own_iou.to(scores.dtype))
        extra = (~is_head) & (soft >= soft_score_thresh)
        out_boxes = torch.cat([out_boxes, boxes[extra]])
        out_scores = torch.cat([out_scores, soft[extra]])
        out_labels = torch.cat([out_labels, labels[extra]])
    order = torch.argsort(out_scores, descending=True, stable=True)
    return out_boxes[order], out_scores[order], out_labels[order]


def soft_box_voting(boxes: Tensor, scores: Tensor, labels: Tensor, vote_thresh: float,
                    score_thresh: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Soft voting: :func:`box_voting` with ``soft_score_thresh=score_thresh``."""
    return box_voting(boxes, scores, labels, vote_thresh, soft_score_thresh=float(score_thresh))


def merge_detections(boxes: Tensor, scores: Tensor, labels: Tensor, merge_type: str, nms_thresh: float,
                     vote_thresh: float, soft_score_thresh: float, detections_per_img: int
                     ) -> Tuple[Tensor, Tensor, Tensor]:
    """Merge the detections of all augmentations of one image.

    Args:
        boxes: Tensor[N, 4] xyxy in the original image; scores: Tensor[N]; labels: Tensor[N] int64.
        merge_type: ``"nms"`` (class-aware NMS at ``nms_thresh``), ``"vote"`` or ``"soft-vote"``
            (see :func:`box_voting`, IoU ``vote_thresh``, soft score threshold ``soft_score_thresh``).
        detections_per_img: keep at most this many (the best); <= 0: keep all.

    Returns:
        ``(boxes Tensor[K, 4], scores Tensor[K], labels Tensor[K])`` sorted by decreasing score.
    """
    if merge_type not in MERGE_TYPES:
        raise ValueError(f"merge_type must be one of {MERGE_TYPES}, got {merge_type!r}")
    if merge_type == "nms":
        keep = _batched_nms()(boxes, scores, labels, float(nms_thresh)) if len(boxes) else \
            torch.zeros(0, dtype=torch.int64, device=boxes.device)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    else:
        soft = soft_score_thresh if merge_type == "soft-vote" else None
        boxes, scores, labels = box_voting(boxes, scores, labels, vote_thresh, soft)
    if 0 < detections_per_img < len(scores):
        top = torch.topk(scores, detections_per_img, sorted=True).indices
        boxes, scores, labels = boxes[top], scores[top], labels[top]
    return boxes, scores, labels


def tta_input_transforms() -> T.Compose:
    """The data-loader transforms under TTA: images stay at their original size (BGR 0..255 float
    Tensor[3, H, W]); :class:`BBoxAugmentor` resizes and normalises each view."""
    return T.Compose([T.ToTensor()])


def _images_as_list(images) -> List[Tensor]:
    if isinstance(images, ImageList):
        return [images.tensors[i, :, :h, :w] for i, (h, w) in enumerate(images.image_sizes)]
    if isinstance(images, Tensor):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def _view_batch(images: Sequence[Tensor], aug: Augmentation, normalize,
                size_divisibility: int) -> ImageList:
    """One view of every image (resized, mirrored with ``aug.hflip``, normalised), batched; on the
    images' device."""
    resize = T.Resize(aug.min_size, aug.max_size if aug.max_size > 0 else None)
    views = []
    for img in images:
        if not img.is_floating_point():  # a uint8 batch (the default loaders'): float, exactly
            img = img.float()
        view, _ = resize(img)
        if aug.hflip:
            view = view.flip(-1)
        views.append(normalize(view, None)[0])
    return to_image_list(views, size_divisibility)


def _map_back(pred: BoxList, aug: Augmentation, view_hw: Tuple[int, int], size: Tuple[int, int]) -> BoxList:
    """A view's detections (BoxList in the ``view_hw`` (h, w) frame) -> the original image's frame
    (``size`` (w, h)): flip undone, ``aug.size_range`` applied in the view frame, resized."""
    view_size = (int(view_hw[1]), int(view_hw[0]))
    if tuple(pred.size) != view_size:
        raise ValueError(f"test-time augmentation: the model returned boxes for an image of size "
                         f"{pred.size} (w, h), expected the input size {view_size}")
    if aug.hflip:
        pred = pred.transpose(FLIP_LEFT_RIGHT)
    if aug.size_range is not None:
        pred = pred[keep_size_range(pred.bbox, *aug.size_range)]
    return pred.resize(size)


def _original_sizes(images: Sequence[Tensor]) -> List[Tuple[int, int]]:
    return [(int(img.shape[-1]), int(img.shape[-2])) for img in images]


@torch.no_grad()
def detect_augmented(model: nn.Module, images: Sequence[Tensor], aug: Augmentation, normalize,
                     size_divisibility: int = 0) -> List[BoxList]:
    """Detections of one augmented view of every image, mapped back to the original image
    (any detector: ``model(ImageList)``; one NMS call and one host copy for the view).

    Args:
        model: detector in eval mode (``model(ImageList) -> list of BoxList`` in the input frame).
        images: per image Tensor[3, H_i, W_i], BGR 0..255, at the original size.
        aug: the view; normalize: callable ``(Tensor, None) -> (Tensor, None)`` (the INPUT normalisation).

    Returns:
        per image a BoxList of size ``(W_i, H_i)`` with ``scores`` and ``labels``.
    """
    batch = _view_batch(images, aug, normalize, size_divisibility)
    outputs = model(batch)
    return [_map_back(pred, aug, hw, size)
            for pred, hw, size in zip(outputs, batch.image_sizes, _original_sizes(images))]


@torch.no_grad()
def detect_views_batched(model: nn.Module, images: Sequence[Tensor], augs: Sequence[Augmentation],
                         normalize, size_divisibility: int = 0) -> List[List[BoxList]]:
    """:func:`detect_augmented` of every view, with ONE NMS call and ONE device-to-host copy for
    all views and images: the pre-NMS candidates of each view (``model.candidates``, fixed shapes
    on the device) are stacked (:meth:`DenseCandidates.cat`; NMS groups are per view and image, so
    views never suppress each other) and finished by ``model.detect``; the mapping back runs on
    the host. Needs a dense detector (:class:`GeneralizedRCNN`); the detections equal
    :func:`detect_augmented`'s.

    Returns:
        per view, per image a CPU BoxList of size ``(W_i, H_i)`` with ``scores`` and ``labels``.
    """
    from maskrcnn_benchmark.modeling.dense_heads.base import DenseCandidates

    batches = [_view_batch(images, aug, normalize, size_divisibility) for aug in augs]
    candidates = DenseCandidates.cat([model.candidates(batch) for batch in batches])
    dets = model.detect(candidates).to_boxlists()
    n, sizes = len(images), _original_sizes(images)
    return [[_map_back(dets[v * n + i], aug, batch.image_sizes[i], sizes[i]) for i in range(n)]
            for v, (aug, batch) in enumerate(zip(augs, batches))]


class BBoxAugmentor:
    """Run a detector on several views of a batch and merge the boxes (see the module docstring).

    Args:
        augmentations: the views; the first is usually the identity at the test size.
        merge_type: one of :data:`MERGE_TYPES`.
        nms_thresh: IoU of the ``"nms"`` merge; vote_thresh: IoU of the vote clusters.
        soft_score_thresh: minimum score of a soft-vote member.
        detections_per_img: cap on the merged boxes per image (> 0).
        pixel_mean, pixel_std, to_bgr255: the INPUT normalisation; size_divisibility: batch padding.
    """

    def __init__(self, augmentations: Sequence[Augmentation], merge_type: str = "nms", nms_thresh: float = 0.6,
                 vote_thresh: float = 0.66, soft_score_thresh: float = 0.05, detections_per_img: int = 100,
                 pixel_mean: Sequence[float] = (102.9801, 115.9465, 122.7717),
                 pixel_std: Sequence[float] = (1.0, 1.0, 1.0), to_bgr255: bool = True, size_divisibility: int = 0):
        if not augmentations:
            raise ValueError("BBoxAugmentor: no augmentations")
        if merge_type not in MERGE_TYPES:
            raise ValueError(f"BBoxAugmentor: merge_type must be one of {MERGE_TYPES}, got {merge_type!r}")
        if not 0.0 < vote_thresh <= 1.0:
            raise ValueError(f"BBoxAugmentor: vote_thresh must be in (0, 1], got {vote_thresh}")
        if int(detections_per_img) <= 0:
            raise ValueError(f"BBoxAugmentor: detections_per_img must be > 0, got {detections_per_img}")
        self.augmentations = list(augmentations)
        self.merge_type = merge_type
        self.nms_thresh = float(nms_thresh)
        self.vote_thresh = float(vote_thresh)
        self.soft_score_thresh = float(soft_score_thresh)
        self.detections_per_img = int(detections_per_img)
        self.normalize = T.Normalize(pixel_mean, pixel_std, to_bgr255)
        self.size_divisibility = int(size_divisibility)

    @torch.no_grad()
    def __call__(self, model: nn.Module, images) -> List[BoxList]:
        """
        Args:
            model: detector in eval mode.
            images: ImageList / list of Tensor[3, H_i, W_i] (BGR 0..255, original size, see
                :func:`tta_input_transforms`); an ImageList is cropped to its ``image_sizes``.

        Returns:
            per image a BoxList in the original ``(W_i, H_i)`` with ``scores`` and ``labels``,
            at most ``detections_per_img`` boxes, sorted by decreasing score.
        """
        images = _images_as_list(images)
        if hasattr(model, "candidates") and hasattr(model, "detect"):  # one sync for all views
            views = detect_views_batched(model, images, self.augmentations, self.normalize,
                                         self.size_divisibility)
        else:
            views = [detect_augmented(model, images, aug, self.normalize, self.size_divisibility)
                     for aug in self.augmentations]
        results = []
        for per_view in zip(*views):
            size = per_view[0].size
            boxes = torch.cat([p.bbox for p in per_view])
            scores = torch.cat([p.get_field("scores") for p in per_view])
            labels = torch.cat([p.get_field("labels") for p in per_view])
            boxes, scores, labels = merge_detections(boxes, scores, labels, self.merge_type, self.nms_thresh,
                                                     self.vote_thresh, self.soft_score_thresh,
                                                     self.detections_per_img)
            out = BoxList(boxes, size)
            out.add_field("scores", scores)
            out.add_field("labels", labels)
            results.append(out)
        return results

    @classmethod
    def from_config(cls, cfg) -> "BBoxAugmentor":
        """From ``cfg.TEST.BBOX_AUG`` (validated: a bad key raises ValueError naming it), ``cfg.INPUT``,
        ``cfg.TEST.DETECTIONS_PER_IMG`` and the head's ``NMS_TH`` / ``INFERENCE_TH``."""
        a = cfg.TEST.BBOX_AUG
        scales = _check_scales(a.SCALES)
        ranges = _check_ranges(a.SCALE_RANGES, len(scales))
        if int(a.MAX_SIZE) <= 0:
            raise ValueError(f"TEST.BBOX_AUG.MAX_SIZE must be > 0, got {a.MAX_SIZE}")
        if a.MERGE_TYPE not in MERGE_TYPES:
            raise ValueError(f"TEST.BBOX_AUG.MERGE_TYPE must be one of {MERGE_TYPES}, got {a.MERGE_TYPE!r}")
        if not 0.0 < float(a.VOTE_TH) <= 1.0:
            raise ValueError(f"TEST.BBOX_AUG.VOTE_TH must be in (0, 1], got {a.VOTE_TH}")
        if a.SCALE_H_FLIP and not scales:
            logger.warning("TEST.BBOX_AUG.SCALE_H_FLIP is set but TEST.BBOX_AUG.SCALES is empty: no effect")
        augs = [Augmentation(int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST))]
        if a.H_FLIP:
            augs.append(Augmentation(int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST), hflip=True))
        for i, scale in enumerate(scales):
            rng = ranges[i] if ranges else None
            augs.append(Augmentation(scale, int(a.MAX_SIZE), False, rng))
            if a.SCALE_H_FLIP:
                augs.append(Augmentation(scale, int(a.MAX_SIZE), True, rng))
        node = _head_node(cfg)
        return cls(augs, merge_type=a.MERGE_TYPE if a.VOTE else "nms", nms_thresh=node.NMS_TH,
                   vote_thresh=float(a.VOTE_TH), soft_score_thresh=node.INFERENCE_TH,
                   detections_per_img=cfg.TEST.DETECTIONS_PER_IMG, pixel_mean=cfg.INPUT.PIXEL_MEAN,
                   pixel_std=cfg.INPUT.PIXEL_STD, to_bgr255=cfg.INPUT.TO_BGR255,
                   size_divisibility=cfg.DATALOADER.SIZE_DIVISIBILITY)

    def __repr__(self) -> str:
        return (f"BBoxAugmentor({len(self.augmentations)} views {self.augmentations}, "
                f"merge={self.merge_type}, nms_thresh={self.nms_thresh}, vote_thresh={self.vote_thresh}, "
                f"detections_per_img={self.detections_per_img})")


def _check_scales(scales) -> List[int]:
    if isinstance(scales, (int, float)):
        scales = (scales,)
    out = []
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or int(s) != s or s <= 0:
            raise ValueError(f"TEST.BBOX_AUG.SCALES must be positive integer sizes (px), got {tuple(scales)}")
        out.append(int(s))
    return out


def _check_ranges(ranges, num_scales: int) -> List[Tuple[float, float]]:
    ranges = list(ranges)
    if not ranges:
        return []
    if len(ranges) != num_scales:
        raise ValueError(f"TEST.BBOX_AUG.SCALE_RANGES must have one [lo, hi] per scale of TEST.BBOX_AUG.SCALES "
                         f"({num_scales}), got {len(ranges)}")
    out = []
    for r in ranges:
        r = list(r) if isinstance(r, (list, tuple)) else [r]
        if len(r) != 2 or not all(isinstance(v, (int, float)) for v in r) or not 0 <= r[0] < r[1]:
            raise ValueError(f"TEST.BBOX_AUG.SCALE_RANGES entries must be [lo, hi] with 0 <= lo < hi (px), got {r}")
        out.append((float(r[0]), float(r[1])))
    return out


def _head_node(cfg):
    """The config node of the detector's head (``NMS_TH``, ``INFERENCE_TH``), e.g. MODEL.ATSS for Dynamic ATSS."""
    from maskrcnn_benchmark.modeling.dense_heads import config_node, head_name

    name = head_name(cfg)
    node = getattr(cfg.MODEL, config_node(cfg), None)
    if node is None or not hasattr(node, "NMS_TH") or not hasattr(node, "INFERENCE_TH"):
        raise ValueError(f"test-time augmentation: head {name!r} has no MODEL.<node>.NMS_TH / INFERENCE_TH")
    return node


def build_bbox_augmentor(cfg) -> Optional[BBoxAugmentor]:
    """``BBoxAugmentor.from_config(cfg)`` when ``TEST.BBOX_AUG.ENABLED``, else None."""
    if not cfg.TEST.BBOX_AUG.ENABLED:
        return None
    tta = BBoxAugmentor.from_config(cfg)
    logger.info("Test-time augmentation: %s", tta)
    return tta
