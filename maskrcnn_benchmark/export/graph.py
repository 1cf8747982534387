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

The batch dimension is free (the export may declare it dynamic). The spatial size is fixed, or
with ``dynamic=True`` free too (multiples of the size divisibility): the priors are then computed
in the graph from the feature-map sizes (:class:`GridPriors`), and the post-processing slices the
levels by the sizes the graph computes.
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
           "plain_nms_indices", "NonMaxSuppressionOp", "GridPriors"]


class GridPriors(nn.Module):
    """The priors of a prior generator as a traceable function of the feature-map sizes.

    Every generator of the toolkit places the same ``A`` priors (rows of ``D`` values) at each cell
    of a regular grid: ``prior(y, x, a) = base[a] + x * dx + y * dy`` per level. ``base``, ``dx``
    and ``dy`` are read off the generator's own output on a 2 x 2 grid, and checked against a
    3 x 4 grid (ValueError for a generator that is not such a grid).

    Args:
        generator: ``generator(features) -> list of Tensor[H_l * W_l * A, D]``.
        num_levels: feature levels.

    ``forward(features)`` -> per level Tensor[H_l * W_l * A, D], computed from ``H_l`` and
    ``W_l`` with ``arange`` (an export keeps them symbolic).
    """

    def __init__(self, generator: nn.Module, num_levels: int):
        super().__init__()
        grid = generator([torch.zeros(1, 1, 2, 2)] * num_levels)
        self.num_levels = num_levels
        for lvl, p in enumerate(grid):
            p = p.detach().float().reshape(2, 2, -1, p.shape[-1])  # [y, x, A, D]
            self.register_buffer(f"base_{lvl}", p[0, 0].clone(), persistent=False)
            self.register_buffer(f"dx_{lvl}", (p[0, 1] - p[0, 0]).clone(), persistent=False)
            self.register_buffer(f"dy_{lvl}", (p[1, 0] - p[0, 0]).clone(), persistent=False)
        check = generator([torch.zeros(1, 1, 3, 4)] * num_levels)
        for want, got in zip(check, self([torch.zeros(1, 1, 3, 4)] * num_levels)):
            if want.shape != got.shape or not torch.allclose(want.float(), got, atol=1e-3):
                raise ValueError(f"{type(generator).__name__}: priors are not a regular grid; "
                                 "use a fixed-size export")

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        out = []
        for lvl, f in enumerate(features):
            base, dx, dy = (getattr(self, f"{n}_{lvl}") for n in ("base", "dx", "dy"))
            ys = torch.arange(f.shape[-2], device=f.device, dtype=torch.float32)
            xs = torch.arange(f.shape[-1], device=f.device, dtype=torch.float32)
            cell = ys[:, None, None, None] * dy + xs[None, :, None, None] * dx   # [H, W, 1, D]
            out.append((cell + base).reshape(-1, base.shape[-1]))
        return out


class DenseDetectorGraph(nn.Module):
    """Backbone and dense head of a :class:`GeneralizedRCNN` for a fixed ``(H, W)`` input.

    Args:
        model: the detector (``backbone`` and ``rpn``: a :class:`DenseHead`).
        image_hw: the input's ``(H, W)``, each a multiple of the model's size divisibility.
        amp_dtype: autocast dtype of the PyTorch forward (backbone and head convs; scores and
            boxes stay float32); None: float32. The ONNX export itself is traced in float32.
        batch_invariant: with ``image_sizes``, mask each image's canvas (``TEST.BATCH_INVARIANT``).
        dynamic: any input size (multiples of the size divisibility): priors from
            :class:`GridPriors`; ``image_hw`` is then only the size of the example (and of
            ``level_sizes``).

    ``forward(images: Tensor[B, 3, H, W], image_sizes: Tensor[B, 2] (h, w) or None)`` ->
    ``(scores [B, N, C], boxes [B, N, 4], candidate_mask [B, N, C] bool)``, float32; attributes
    ``level_sizes`` (``N_l``) and ``num_classes`` (C). With ``image_sizes`` (and
    ``batch_invariant``) priors outside an image's canvas are no candidates.
    """

    def __init__(self, model: nn.Module, image_hw: Tuple[int, int],
                 amp_dtype: Optional[torch.dtype] = None, batch_invariant: bool = True,
                 dynamic: bool = False):
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
        self.dynamic = bool(dynamic)
        self.grid_priors = GridPriors(self.dense_head.prior_generator, len(priors)) if dynamic else None
        for i, p in enumerate(priors):
            if not dynamic:
                self.register_buffer(f"priors_{i}", p.detach().clone(), persistent=False)

    def priors(self, features: Optional[Sequence[torch.Tensor]] = None) -> List[torch.Tensor]:
        """Per level Tensor[N_l, D] priors: of the fixed input size, or (``dynamic``) computed
        from the ``features``' sizes."""
        if self.dynamic:
            return self.grid_priors(features)
        return [getattr(self, f"priors_{i}") for i in range(len(self.level_sizes))]

    def padding_mask(self, images: torch.Tensor,
                     image_sizes: Optional[torch.Tensor]) -> Optional[PaddingMask]:
        """The canvases of ``image_sizes`` [B, 2] (h, w) in ``images`` (None without sizes or
        with ``batch_invariant`` off)."""
        if image_sizes is None or not self.batch_invariant:
            return None
        return PaddingMask.from_sizes(image_sizes, self.size_divisibility)

    def forward(self, images: torch.Tensor, image_sizes: Optional[torch.Tensor] = None):
        scores, boxes, mask, _ = self.candidates(images, image_sizes)
        return scores, boxes, mask

    def candidates(self, images: torch.Tensor, image_sizes: Optional[torch.Tensor] = None):
        """:meth:`forward`'s outputs and the per-level candidate counts ``N_l`` (traced from
        the feature sizes in a dynamic graph)."""
        div = self.size_divisibility
        if not self.dynamic and tuple(images.shape[-2:]) != self.image_hw:
            raise ValueError(f"input of spatial size {tuple(images.shape[-2:])}, the graph is built "
                             f"for {self.image_hw}")
        if self.dynamic and not torch.jit.is_tracing() and not torch.compiler.is_compiling() and div and (
                images.shape[-2] % div or images.shape[-1] % div):
            raise ValueError(f"input of spatial size {tuple(images.shape[-2:])}: a dynamic graph "
                             f"takes multiples of the size divisibility {div}")
        ctx = (torch.autocast(device_type=images.device.type, dtype=self.amp_dtype)
               if self.amp_dtype is not None else contextlib.nullcontext())
        masks = self.padding_mask(images, image_sizes)
        with ctx:
            if masks is None:
                features, level_masks = list(self.backbone(images)), None
            else:
                features = list(self.backbone(images, masks))
                level_masks = masks.levels(self.backbone.strides, features)
            priors = self.priors(features)
            prediction = self.dense_head.predict(features, priors, level_masks)
        a = self.dense_head.head.num_anchors
        level_sizes = ([f.shape[-2] * f.shape[-1] * a for f in features] if self.dynamic
                       else list(self.level_sizes))
        return (prediction.scores.float(), prediction.boxes.float(), prediction.candidate_mask,
                level_sizes)


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

    def _candidates(self, scores, boxes, mask, level_sizes):
        """Per-level TopK -> (scores [B, M] (-1: none), boxes [B, M, 4], labels [B, M] 1..C).

        Each level's flat scores get ``pre_nms_top_n`` columns of -1 appended, so that the TopK
        has the static size ``pre_nms_top_n`` even where a level has fewer pairs (a dynamic graph
        does not know ``N_l``); those columns are never candidates."""
        c, k = self.num_classes, self.pre_nms_top_n
        out_s, out_b, out_l = [], [], []
        start = 0
        for n in level_sizes:
            s = scores[:, start:start + n]
            flat = torch.where(mask[:, start:start + n], s, torch.full_like(s, -1.0)).flatten(1)
            flat = torch.cat([flat, flat.new_full((flat.shape[0], k), -1.0)], dim=1)
            top, idx = flat.topk(k, dim=1)
            prior = torch.div(idx, c, rounding_mode="floor")  # < N_l + k // c + 1
            level_boxes = boxes[:, start:start + n]
            level_boxes = torch.cat([level_boxes, level_boxes.new_zeros(
                level_boxes.shape[0], k // c + 1, 4)], dim=1)  # the padding columns' boxes
            out_s.append(top)
            out_l.append(idx % c + 1)
            out_b.append(torch.gather(level_boxes, 1, prior.unsqueeze(-1).expand(-1, -1, 4)))
            start = start + n
        return torch.cat(out_s, 1), torch.cat(out_b, 1), torch.cat(out_l, 1)

    def forward(self, scores: torch.Tensor, boxes: torch.Tensor, candidate_mask: torch.Tensor,
                image_sizes: torch.Tensor, level_sizes: Optional[Sequence[int]] = None):
        """``level_sizes``: ``N_l`` per level (default: the constructor's; a dynamic graph passes
        the ones it traced from the feature sizes)."""
        top, bx, labels = self._candidates(scores, boxes, candidate_mask,
                                           self.level_sizes if level_sizes is None else level_sizes)
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
        scores, boxes, mask, level_sizes = self.graph.candidates(images, image_sizes)
        return self.detections(scores, boxes, mask, image_sizes, level_sizes)
