"""What every dense detector head shares (detectron2 ``dense_detector`` style).

A dense head is four parts (maskrcnn-benchmark's split plus a separate assigner):

- a convolutional module producing per-level maps (``[B, A*K, H, W]`` per level),
- anchors (or points) per level,
- ``label_anchors``: assignment of the anchors of each image, under ``torch.no_grad``,
- ``losses``: a dict of scalar losses, and a post-processor for inference.

:class:`DenseHead` holds the train / eval split and the flatten helpers; subclasses implement
:meth:`DenseHead.forward_train` and :meth:`DenseHead.forward_test`. :class:`DensePostProcessor`
is the shared inference step (threshold, per-level top-k, decode, clip, class-aware NMS, top-N).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from maskrcnn_benchmark.layers import batched_nms
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList
from maskrcnn_benchmark.utils.comm import get_world_size, reduce_sum

__all__ = ["DenseHead", "DensePostProcessor", "permute_and_flatten", "concat_levels",
           "reduce_mean_count", "init_conv_std"]


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


class DensePostProcessor:
    """Boxes of every image from per-level scores and box regressions.

    For each image and level: candidates are the (anchor, class) pairs with ``candidate_mask``
    (default ``scores > score_thresh``), at most ``pre_nms_top_n`` of them ranked by ``scores``;
    their boxes are decoded, clipped to the image, and empty boxes dropped. Across levels:
    class-aware NMS at ``nms_thresh``, then the ``detections_per_img`` highest scores.

    Args:
        decode: ``decode(deltas[M, 4], anchors[M, D]) -> boxes[M, 4]`` (a box coder's decode).
        score_thresh, pre_nms_top_n, nms_thresh, detections_per_img: as above.
        score_transform: applied to the kept ranking scores to give the reported scores (must be
            monotonic, e.g. ``torch.sqrt`` for ATSS / FCOS); identity when None.
    """

    def __init__(self, decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 score_thresh: float = 0.05, pre_nms_top_n: int = 1000, nms_thresh: float = 0.6,
                 detections_per_img: int = 100,
                 score_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.decode = decode
        self.score_thresh = float(score_thresh)
        self.pre_nms_top_n = int(pre_nms_top_n)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)
        self.score_transform = score_transform

    def __call__(self, scores: Sequence[torch.Tensor], box_regression: Sequence[torch.Tensor],
                 anchors: Sequence[Sequence[torch.Tensor]], image_sizes: Sequence[Tuple[int, int]],
                 candidate_mask: Optional[Sequence[torch.Tensor]] = None) -> List[BoxList]:
        """
        Args:
            scores: per level Tensor[B, N_l, C] ranking scores (probabilities).
            box_regression: per level Tensor[B, N_l, 4] raw regression outputs.
            anchors: per image, per level Tensor[N_l, 4] (or any per-location Tensor[N_l, D]
                that ``decode`` accepts, e.g. points [N_l, 2] for FCOS-style heads).
            image_sizes: per image ``(h, w)`` of the (resized, unpadded) image.
            candidate_mask: per level Tensor[B, N_l, C] bool; default ``scores > score_thresh``.
        Returns:
            per image a BoxList (size ``(w, h)``) with fields ``scores`` [K] and ``labels`` [K]
            int64 in 1..C, sorted by decreasing score, ``K <= detections_per_img``.
        """
        results = []
        for i, (h, w) in enumerate(image_sizes):
            boxes, kept_scores, labels = [], [], []
            for lvl in range(len(scores)):
                s = scores[lvl][i]
                mask = candidate_mask[lvl][i] if candidate_mask is not None else s > self.score_thresh
                b, sc, lab = self._level_candidates(s, mask, box_regression[lvl][i], anchors[i][lvl])
                boxes.append(b)
                kept_scores.append(sc)
                labels.append(lab)
            results.append(self._select(torch.cat(boxes), torch.cat(kept_scores), torch.cat(labels),
                                        (int(w), int(h))))
        return results

    def _level_candidates(self, scores: torch.Tensor, mask: torch.Tensor, deltas: torch.Tensor,
                          anchors: torch.Tensor):
        """Tensor[N, C] scores / mask, Tensor[N, 4] deltas and anchors -> top candidates'
        (boxes[M, 4], scores[M], labels[M] in 1..C)."""
        num_classes = scores.shape[1]
        flat = torch.where(mask, scores, torch.full_like(scores, -1.0)).flatten()
        k = min(self.pre_nms_top_n, flat.numel())
        top, idx = flat.topk(k, sorted=False)
        keep = top >= 0
        top, idx = top[keep], idx[keep]
        anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
        labels = idx % num_classes + 1
        boxes = self.decode(deltas[anchor_idx].float(), anchors[anchor_idx])
        return boxes, top.float(), labels

    def _select(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                size: Tuple[int, int]) -> BoxList:
        """Clip, drop empty, class-aware NMS, top-N, sort; ``size`` is ``(w, h)``."""
        w, h = size
        boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                             boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[nonempty], scores[nonempty], labels[nonempty]
        if self.score_transform is not None:
            scores = self.score_transform(scores)
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)
        order = scores[keep].argsort(descending=True)[: self.detections_per_img]
        keep = keep[order]
        result = BoxList(boxes[keep], size)
        result.add_field("scores", scores[keep])
        result.add_field("labels", labels[keep].to(torch.int64))
        return result


class DenseHead(nn.Module):
    """Base of the dense detector heads: ``forward`` splits training from inference.

    Subclasses set ``self.head`` (the conv module), ``self.anchor_generator`` and implement
    :meth:`forward_train` and :meth:`forward_test`; typically with a ``label_anchors`` step under
    ``torch.no_grad`` and a ``losses`` step that returns the loss dict.
    """

    def __init__(self, head: nn.Module, loss, post_processor: "DensePostProcessor"):
        """``head``: the conv module; ``loss``: callable returning the loss dict (stored as
        ``loss_evaluator``); ``post_processor``: the inference step. Subclasses add their anchor or
        point generator."""
        super().__init__()
        self.head = head
        self.loss_evaluator = loss
        self.post_processor = post_processor

    def forward(self, images: ImageList, features: List[torch.Tensor],
                targets: Optional[List[BoxList]] = None):
        """
        Args:
            images: the padded batch (its ``image_sizes`` bound the detections).
            features: per FPN level Tensor[B, C, H_l, W_l].
            targets: per image BoxList with a ``labels`` field (1..C); required in training.
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
            return None, self.forward_train(images, features, targets)
        return self.forward_test(images, features), {}

    def forward_train(self, images: ImageList, features: List[torch.Tensor],
                      targets: List[BoxList]) -> dict:
        raise NotImplementedError

    def forward_test(self, images: ImageList, features: List[torch.Tensor]) -> List[BoxList]:
        raise NotImplementedError
