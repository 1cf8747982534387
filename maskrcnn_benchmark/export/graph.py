"""The exportable graph of a dense detector: plain torch, fixed shapes, no compiled op.

- :class:`DenseDetectorGraph`: backbone + FPN + :meth:`DenseHead.predict` for a fixed input size
  ``H x W`` (the priors are computed once and stored as buffers) -> every candidate's scores
  [B, N, C], boxes [B, N, 4] (input pixels, not clipped) and candidate mask [B, N, C]. Given the
  images' sizes it is batch-invariant: each image sees only its own canvas (its size rounded up
  to the size divisibility, :mod:`~maskrcnn_benchmark.layers.padding_mask`), so its detections
  are those of ``test_net`` whatever the graph's canvas and batch.
- :class:`FixedSizeDetections`: the post-processing of :class:`DensePostProcessor` as a graph of
  standard ONNX operators (TopK, NonMaxSuppression, ScatterND, Gather) with fixed-size, padded
  outputs: boxes [B, K, 4], scores [B, K], labels [B, K] (``K = detections_per_img``; padding
  rows have label 0, score 0 and a zero box).
- :class:`DetectorWithDetections`: the two chained (graph inputs ``images`` and
  ``image_sizes``).

The batch dimension is free (the export may declare it dynamic); the spatial size is fixed.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskrcnn_benchmark.layers.padding_mask import PaddingMask

__all__ = ["DenseDetectorGraph", "FixedSizeDetections", "DetectorWithDetections",
           "plain_nms_indices", "NonMaxSuppressionOp"]


class DenseDetectorGraph(nn.Module):
    """Backbone and dense head of a :class:`GeneralizedRCNN` for a fixed ``(H, W)`` input.

    Args:
        model: the detector (``backbone`` and ``rpn``: a :class:`DenseHead`).
        image_hw: the input's ``(H, W)``, each a multiple of the model's size divisibility.
        amp_dtype: autocast dtype of the PyTorch forward (backbone and head convs; scores and
            boxes stay float32); None: float32. The ONNX export itself is traced in float32.
        batch_invariant: with ``image_sizes``, mask each image's canvas (``TEST.BATCH_INVARIANT``).

    ``forward(images: Tensor[B, 3, H, W], image_sizes: Tensor[B, 2] (h, w) or None)`` ->
    ``(scores [B, N, C], boxes [B, N, 4], candidate_mask [B, N, C] bool)``, float32; attributes
    ``level_sizes`` (``N_l``) and ``num_classes`` (C). With ``image_sizes`` (and
    ``batch_invariant``) priors outside an image's canvas are no candidates.
    """

    def __init__(self, model: nn.Module, image_hw: Tuple[int, int],
                 amp_dtype: Optional[torch.dtype] = None, batch_invariant: bool = True):
        super().__init__()
        h, w = (int(v) for v in image_hw)
        div = int(getattr(model, "size_divisibility", 0) or 0)
        if h <= 0 or w <= 0 or (div and (h % div or w % div)):
            raise ValueError(f"export input size {h}x{w} must be positive multiples of "
                             f"DATALOADER.SIZE_DIVISIBILITY ({div})")
        self.backbone = model.backbone
        self.dense_head = model.rpn
        self.image_hw = (h, w)
        self.amp_dtype = amp_dtype
        self.size_divisibility = div
        self.batch_invariant = bool(batch_invariant)
        self.num_classes = int(self.dense_head.head.num_classes)
        param = next(model.parameters())
        with torch.no_grad():
            features = self.backbone(torch.zeros(1, 3, h, w, device=param.device, dtype=param.dtype))
            priors = self.dense_head.priors(list(features))
        self.level_sizes = tuple(int(p.shape[0]) for p in priors)
        for i, p in enumerate(priors):
            self.register_buffer(f"priors_{i}", p.detach().clone(), persistent=False)

    def priors(self) -> List[torch.Tensor]:
        """Per level Tensor[N_l, D] priors of the fixed input size."""
        return [getattr(self, f"priors_{i}") for i in range(len(self.level_sizes))]

    def padding_mask(self, images: torch.Tensor,
                     image_sizes: Optional[torch.Tensor]) -> Optional[PaddingMask]:
        """The canvases of ``image_sizes`` [B, 2] (h, w) in ``images`` (None without sizes or
        with ``batch_invariant`` off)."""
        if image_sizes is None or not self.batch_invariant:
            return None
        return PaddingMask.from_sizes(image_sizes, self.size_divisibility, images.shape[-2:])

    def forward(self, images: torch.Tensor, image_sizes: Optional[torch.Tensor] = None):
        if tuple(images.shape[-2:]) != self.image_hw:
            raise ValueError(f"input of spatial size {tuple(images.shape[-2:])}, the graph is built "
                             f"for {self.image_hw}")
        ctx = (torch.autocast(device_type=images.device.type, dtype=self.amp_dtype)
               if self.amp_dtype is not None else contextlib.nullcontext())
        masks = self.padding_mask(images, image_sizes)
        with ctx:
            if masks is None:
                features, level_masks = list(self.backbone(images)), None
            else:
                features = list(self.backbone(images, masks))
                level_masks = masks.levels(self.backbone.strides, features)
            prediction = self.dense_head.predict(features, self.priors(), level_masks)
        return prediction.scores.float(), prediction.boxes.float(), prediction.candidate_mask


def plain_nms_indices(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                      score_threshold: float) -> torch.Tensor:
    """ONNX ``NonMaxSuppression`` semantics in plain torch (no compiled op).

    Args:
        boxes: Tensor[B, M, 4] corners (x1, y1, x2, y2).
        scores: Tensor[B, C, M]; entries ``<= score_threshold`` are not candidates.
    Returns:
        Tensor[S, 3] int64 rows ``(batch, class, box)`` of the kept boxes (greedy, per batch and
        class, by decreasing score; a box is suppressed when its IoU with a kept one is > the
        threshold).
    """
    rows = []
    for b in range(boxes.shape[0]):
        cls, idx = (scores[b] > score_threshold).nonzero(as_tuple=True)
        if idx.numel() == 0:
            continue
        order = scores[b, cls, idx].argsort(descending=True, stable=True)
        cls, idx = cls[order], idx[order]
        bx = boxes[b, idx]
        lt = torch.maximum(bx[:, None, :2], bx[None, :, :2])
        rb = torch.minimum(bx[:, None, 2:], bx[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=2)
        area = (bx[:, 2:] - bx[:, :2]).clamp(min=0).prod(dim=1)
        union = area[:, None] + area[None, :] - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
        overlap = ((iou > iou_threshold) & (cls[:, None] == cls[None, :])).cpu().numpy()
        removed = np.zeros(len(overlap), dtype=bool)
        keep = []
        for i in range(len(overlap)):  # greedy: each kept box removes what it overlaps
            if not removed[i]:
                keep.append(i)
                removed |= overlap[i]
        keep_t = torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)
        rows.append(torch.stack([torch.full_like(keep_t, b), cls[keep_t], idx[keep_t]], dim=1))
    if not rows:
        return torch.zeros(0, 3, dtype=torch.int64, device=boxes.device)
    return torch.cat(rows)


class NonMaxSuppressionOp(torch.autograd.Function):
    """:func:`plain_nms_indices` in PyTorch; exported as the standard ONNX ``NonMaxSuppression``
    (TorchScript exporter, through :meth:`symbolic`)."""

    @staticmethod
    def forward(ctx, boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
        return plain_nms_indices(boxes, scores, float(iou_threshold), float(score_threshold))

    @staticmethod
    def symbolic(g, boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
        return g.op("NonMaxSuppression", boxes, scores, max_output_boxes_per_class, iou_threshold,
                    score_threshold)


class FixedSizeDetections(nn.Module):
    """:class:`~maskrcnn_benchmark.modeling.dense_heads.base.DensePostProcessor` with fixed-size
    outputs, from standard ONNX operators.

    Per image and level the ``pre_nms_top_n`` best candidates (TopK over the masked scores);
    boxes clipped to the image (``image_sizes``) and empty ones dropped; class-aware NMS
    (``NonMaxSuppression`` on per-class scores); the ``detections_per_img`` best (TopK).

    Args:
        level_sizes: ``N_l`` per level; num_classes: C.
        pre_nms_top_n, nms_thresh, detections_per_img: as the PyTorch post-processor.

    ``forward(scores [B, N, C], boxes [B, N, 4], candidate_mask [B, N, C], image_sizes [B, 2]
    float (h, w))`` -> ``boxes [B, K, 4]``, ``scores [B, K]``, ``labels [B, K]`` int64 in 1..C
    sorted by decreasing score; rows past an image's detections are padding (label 0, score 0,
    box 0).
    """

    def __init__(self, level_sizes: Sequence[int], num_classes: int, pre_nms_top_n: int,
                 nms_thresh: float, detections_per_img: int):
        super().__init__()
        self.level_sizes = tuple(int(n) for n in level_sizes)
        self.num_classes = int(num_classes)
        self.pre_nms_top_n = int(pre_nms_top_n)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)

    def _candidates(self, scores, boxes, mask):
        """Per-level TopK -> (scores [B, M] (-1: none), boxes [B, M, 4], labels [B, M] 1..C)."""
        c = self.num_classes
        out_s, out_b, out_l = [], [], []
        start = 0
        for n in self.level_sizes:
            s = scores[:, start:start + n]
            flat = torch.where(mask[:, start:start + n], s, torch.full_like(s, -1.0)).flatten(1)
            top, idx = flat.topk(min(self.pre_nms_top_n, n * c), dim=1)
            prior = torch.div(idx, c, rounding_mode="floor") + start
            out_s.append(top)
            out_l.append(idx % c + 1)
            out_b.append(torch.gather(boxes, 1, prior.unsqueeze(-1).expand(-1, -1, 4)))
            start += n
        return torch.cat(out_s, 1), torch.cat(out_b, 1), torch.cat(out_l, 1)

    def forward(self, scores: torch.Tensor, boxes: torch.Tensor, candidate_mask: torch.Tensor,
                image_sizes: torch.Tensor):
        top, bx, labels = self._candidates(scores, boxes, candidate_mask)
        hw = image_sizes.to(bx.dtype)
        limit = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)[:, None, :]  # [B,1,4]
        bx = torch.minimum(bx.clamp(min=0), limit)
        valid = (top >= 0) & (bx[..., 2] > bx[..., 0]) & (bx[..., 3] > bx[..., 1])
        top = torch.where(valid, top, torch.full_like(top, -1.0))
        classes = torch.arange(1, self.num_classes + 1, device=labels.device)
        per_class = torch.where(labels[:, None, :] == classes[None, :, None], top[:, None, :],
                                torch.full_like(top[:, None, :], -1.0))                  # [B,C,M]
        m = top.shape[1]
        selected = NonMaxSuppressionOp.apply(
            bx, per_class, torch.tensor([m], dtype=torch.int64),
            torch.tensor([self.nms_thresh], dtype=torch.float32),
            torch.tensor([-0.5], dtype=torch.float32))
        kept = torch.zeros_like(top)
        kept[selected[:, 0], selected[:, 2]] = 1.0
        final = torch.where(kept > 0, top, torch.full_like(top, -1.0))
        k = min(self.detections_per_img, m)
        best, idx = final.topk(k, dim=1)
        ok = best >= 0
        out_boxes = torch.gather(bx, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
        out_boxes = torch.where(ok.unsqueeze(-1), out_boxes, torch.zeros_like(out_boxes))
        out_scores = torch.where(ok, best, torch.zeros_like(best))
        out_labels = torch.where(ok, torch.gather(labels, 1, idx), torch.zeros_like(idx))
        pad = self.detections_per_img - k
        if pad > 0:
            out_boxes = F.pad(out_boxes, (0, 0, 0, pad))
            out_scores = F.pad(out_scores, (0, pad))
            out_labels = F.pad(out_labels, (0, pad))
        return out_boxes, out_scores, out_labels


class DetectorWithDetections(nn.Module):
    """:class:`DenseDetectorGraph` followed by :class:`FixedSizeDetections`.

    ``forward(images [B, 3, H, W], image_sizes [B, 2] float (h, w) of the unpadded images)`` ->
    ``(boxes [B, K, 4], scores [B, K], labels [B, K])``.
    """

    def __init__(self, graph: DenseDetectorGraph, detections: FixedSizeDetections):
        super().__init__()
        self.graph = graph
        self.detections = detections

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor):
        scores, boxes, mask = self.graph(images, image_sizes)
        return self.detections(scores, boxes, mask, image_sizes)
