"""What every assigner shares: the batched GTs and result types, and the candidate machinery.

An assigner labels the ``N`` anchors (all FPN levels concatenated, level order; shared by the
images) of a whole batch at once from the batch's GTs padded to the largest count ``G``
(:class:`GTBatch`: boxes ``[B, G, 4]`` with a validity mask). Every step has a fixed shape (top-k
candidates, gathers, masks as ``torch.where``): no ``nonzero``, boolean-mask indexing or host
read, so the step runs without a host-device synchronisation and under ``torch.compile``.

The ATSS family works on a small candidate set per GT (the ``k`` anchors with the nearest centres
on every level), so nothing here builds a dense ``[N, G]`` matrix: candidates are found by a
chunked top-k over centre distances, their IoUs are computed element-wise on gathered boxes
(``[B, G, K]``), and an anchor claimed by several GTs is resolved with ``scatter_reduce`` over
anchor indices.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from maskrcnn_benchmark.structures.box_ops import box_centers, point_box_distances

__all__ = [
    "AssignResult",
    "BatchAssignment",
    "GTBatch",
    "Predictions",
    "BaseAssigner",
    "select_candidates",
    "centers_inside",
    "resolve_conflicts",
    "scatter_pairs",
    "gather_gt",
    "unbiased_std",
    "center_margin",
]

# Centre-inside margin of the original code: min(l, t, r, b) > 0.01 pixels.
CENTER_MARGIN = 0.01
# The same test in the original releases' "+1" frame, in continuous coordinates (MODEL.LEGACY_PLUS_ONE):
# their l, t, r, b run from the anchor centre *value* (continuous centre - 0.5) to the inclusive sides
# x1, y1, x2 - 1, y2 - 1, so each is the continuous distance - 0.5 and "> 0.01" is "> 0.51" here.
LEGACY_CENTER_MARGIN = CENTER_MARGIN + 0.5
# Elements of one [G_chunk, N_level] distance block in the candidate search (4 MiB in float32).
DISTANCE_CHUNK_ELEMENTS = 1 << 20


@dataclass
class GTBatch:
    """The GT boxes of a batch, padded to the batch's largest count ``G`` (at least 1).

    Attributes:
        boxes: Tensor[B, G, 4] xyxy pixels; padding rows are the unit box ``(0, 0, 1, 1)`` (finite
            in every box formula; masked by ``valid`` wherever it matters).
        labels: Tensor[B, G] int64, classes 1..C; 0 in padding rows.
        valid: Tensor[B, G] bool, the real GTs.
    """

    boxes: Tensor
    labels: Tensor
    valid: Tensor

    @classmethod
    def from_lists(cls, boxes: Sequence[Tensor], labels: Sequence[Tensor], device=None,
                   dtype=torch.float32) -> "GTBatch":
        """Pads per-image Tensor[G_i, 4] boxes / Tensor[G_i] labels. ``G = max(1, max G_i)`` is
        read from the shapes (host metadata), so this never waits for the device."""
        if len(boxes) != len(labels):
            raise ValueError(f"GTBatch: {len(boxes)} box tensors for {len(labels)} label tensors")
        device = device if device is not None else (boxes[0].device if boxes else None)
        counts = [int(b.shape[0]) if b.numel() else 0 for b in boxes]
        g = max([1] + counts)
        unit = (torch.arange(4, device=device) >= 2).to(dtype)                   # (0, 0, 1, 1)
        out_b, out_l, out_v = [], [], []
        for b, lab, n in zip(boxes, labels, counts):
            b = b.to(device=device, dtype=dtype).reshape(n, 4)
            out_b.append(torch.cat([b, unit.expand(g - n, 4)]))
            out_l.append(torch.nn.functional.pad(lab.to(device=device, dtype=torch.int64).reshape(n),
                                                 (0, g - n)))
            out_v.append(torch.arange(g, device=device) < n)
        if not boxes:
            return cls(torch.zeros(0, 1, 4, device=device, dtype=dtype),
                       torch.zeros(0, 1, dtype=torch.int64, device=device),
                       torch.zeros(0, 1, dtype=torch.bool, device=device))
        return cls(torch.stack(out_b), torch.stack(out_l), torch.stack(out_v))


@dataclass
class Predictions:
    """The detached predictions that a prediction-aware assigner may read.

    Attributes:
        boxes: Tensor[B, N, 4] decoded boxes (xyxy pixels, level order), or None (per-image calls
            of an assigner take Tensor[N, 4]).
        scores: Tensor[B, N, C] class probabilities, or None.
    """

    boxes: Optional[Tensor] = None
    scores: Optional[Tensor] = None


@dataclass
class AssignResult:
    """Assignment of the ``N`` anchors of one image (a row of :class:`BatchAssignment`).

    Attributes:
        labels: Tensor[N] int64; class ``1..C`` for positives, 0 background, -1 ignored.
        gt_inds: Tensor[N] int64; index of the assigned GT for positives, -1 everywhere else.
        quality: Tensor[N] float; the assigner's quality target for positives (see each assigner),
            0 everywhere else.
    """

    labels: Tensor
    gt_inds: Tensor
    quality: Tensor

    @property
    def pos_mask(self) -> Tensor:
        """Tensor[N] bool: the positive anchors."""
        return self.gt_inds >= 0

    @property
    def num_pos(self) -> int:
        """Number of positives (reads the device: not for the training step)."""
        return int(self.pos_mask.sum())

    @classmethod
    def background(cls, num_anchors: int, device, dtype=torch.float32) -> "AssignResult":
        """Everything background (the result for an image with no GT box)."""
        return cls(
            labels=torch.zeros(num_anchors, dtype=torch.int64, device=device),
            gt_inds=torch.full((num_anchors,), -1, dtype=torch.int64, device=device),
            quality=torch.zeros(num_anchors, dtype=dtype, device=device),
        )


@dataclass
class BatchAssignment:
    """Assignment of the ``N`` priors of ``B`` images.

    Attributes:
        labels: Tensor[B, N] int64: class 1..C for positives, 0 background, -1 ignored.
        matched_gt: Tensor[B, N, 4] the assigned GT box of positives (zeros elsewhere).
        quality: Tensor[B, N] the assigner's quality target (0 where not positive).
        pos: Tensor[B, N] bool, the positives.
        gt_inds: Tensor[B, N] int64, index of the assigned GT (into the padded ``G``), -1 elsewhere.
        stats: 0-dim tensors about the GTs (see :func:`unmatched_gt_stats`), read on the host
            only where the losses are (once per step, in the training hooks).
    """

    labels: Tensor
    matched_gt: Tensor
    quality: Tensor
    pos: Tensor
    gt_inds: Optional[Tensor] = None
    stats: Dict[str, Tensor] = field(default_factory=dict)

    def image(self, i: int) -> "AssignResult":
        """The :class:`AssignResult` of image ``i``."""
        gt_inds = self.gt_inds[i] if self.gt_inds is not None else torch.where(self.pos[i], 0, -1)
        return AssignResult(self.labels[i], gt_inds, self.quality[i])


def gt_has_positive(gt_inds: Tensor, num_gt: int) -> Tensor:
    """Tensor[B, N] int64 assigned GT (-1: none) -> Tensor[B, G] bool, the GTs with a positive."""
    hit = torch.zeros(gt_inds.shape[0], num_gt + 1, dtype=torch.int32, device=gt_inds.device)
    hit.scatter_(1, gt_inds + 1, 1)                                               # -1 -> column 0
    return hit[:, 1:] > 0


def unmatched_gt_stats(gt: GTBatch, has_positive: Tensor) -> Dict[str, Tensor]:
    """How many GTs got no positive prior (0-dim tensors, no host read).

    Args:
        gt: the batch's GTs; has_positive: Tensor[B, G] bool (:func:`gt_has_positive`).

    Returns:
        ``{"num_gt": int64, "num_gt_unmatched": int64, "min_unmatched_size": float32}``: the real
        GTs, those with no positive, and the smallest ``sqrt(area)`` in pixels among the latter
        (``inf`` when there is none).
    """
    unmatched = gt.valid & ~has_positive
    wh = (gt.boxes[..., 2:] - gt.boxes[..., :2]).clamp(min=0)
    size = (wh[..., 0] * wh[..., 1]).sqrt().float()
    return {"num_gt": gt.valid.sum(), "num_gt_unmatched": unmatched.sum(),
            "min_unmatched_size": torch.where(unmatched, size, float("inf")).amin()}


def gather_gt(values: Tensor, gt_inds: Tensor) -> Tensor:
    """Per-prior rows of a per-GT tensor: ``values[b, max(gt_inds[b, n], 0)]``.

    Args:
        values: Tensor[B, G] or Tensor[B, G, D]; gt_inds: Tensor[B, N] int64 (-1 allowed).
    Returns:
        Tensor[B, N] or Tensor[B, N, D] (row 0 where ``gt_inds`` is -1; callers mask it).
    """
    idx = gt_inds.clamp(min=0)
    if values.dim() == 2:
        return values.gather(1, idx)
    return values.gather(1, idx[..., None].expand(-1, -1, values.shape[-1]))


def unbiased_std(x: Tensor, dim: int) -> Tensor:
    """``torch.std`` (unbiased) along ``dim``; 0 instead of NaN when there is a single sample
    (decided from the shape)."""
    if x.shape[dim] < 2:
        return torch.zeros_like(x.sum(dim))
    return x.std(dim)


def select_candidates(
    anchors_per_level: Sequence[Tensor], gt_centers: Tensor, k: int,
    chunk_elements: int = DISTANCE_CHUNK_ELEMENTS,
) -> Tensor:
    """The ``min(k, N_l)`` anchors of every level whose centres are nearest to each GT centre.

    Distances are squared L2 between anchor and GT centres (same order as L2), computed per level
    in GT chunks of at most ``chunk_elements`` entries, so the peak is one small block, not
    ``[N, G]``.

    Args:
        anchors_per_level: list of Tensor[N_l, 4], level order (their concatenation is the
            image's anchor list).
        gt_centers: Tensor[G, 2].
        k: candidates per level (TOPK x anchors per location).

    Returns:
        Tensor[G, K] int64: indices into the concatenated anchors, ``K = sum_l min(k, N_l)``;
        per GT, level by level, nearest first. Indices of one GT are distinct.
    """
    num_gt = gt_centers.shape[0]
    out: List[Tensor] = []
    start = 0
    gx, gy = gt_centers[:, 0:1], gt_centers[:, 1:2]
    for anchors in anchors_per_level:
        n = anchors.shape[0]
        kl = min(k, n)
        if kl > 0:
            c = box_centers(anchors)
            cx, cy = c[:, 0][None], c[:, 1][None]
            step = max(1, chunk_elements // max(n, 1))
            idx_level = []
            for g0 in range(0, num_gt, step):
                d = (gx[g0:g0 + step] - cx).square_()
                d += (gy[g0:g0 + step] - cy).square_()
                idx_level.append(d.topk(kl, dim=1, largest=False, sorted=True).indices)
            out.append(torch.cat(idx_level, dim=0) + start)
        start += n
    if not out:
        return torch.zeros((num_gt, 0), dtype=torch.int64, device=gt_centers.device)
    return torch.cat(out, dim=1)


def center_margin(legacy_plus_one: bool = False) -> float:
    """The centre-inside margin of the convention: ``CENTER_MARGIN`` (0.01 px), or with
    ``legacy_plus_one`` the releases' test in continuous coordinates, ``LEGACY_CENTER_MARGIN`` (0.51 px)."""
    return LEGACY_CENTER_MARGIN if legacy_plus_one else CENTER_MARGIN


def centers_inside(points: Tensor, gt_boxes: Tensor, margin: float = CENTER_MARGIN) -> Tensor:
    """Whether points lie inside their GT by more than ``margin`` pixels on every side.

    Args:
        points: Tensor[..., K, 2] with gt_boxes Tensor[..., 4] (one box per row of K points,
            e.g. [B, G, K, 2] and [B, G, 4]), or points Tensor[..., 2] and gt_boxes Tensor[..., 4]
            of broadcastable shapes.

    Returns:
        Tensor[..., K] (or the broadcast shape) bool: ``min(x - x1, y - y1, x2 - x, y2 - y) >
        margin``.
    """
    if points.dim() == gt_boxes.dim() + 1:
        gt_boxes = gt_boxes[..., None, :]
    ltrb = point_box_distances(points, gt_boxes)
    return ltrb.amin(dim=-1) > margin


def resolve_conflicts(cand_idx: Tensor, is_pos: Tensor, score: Tensor,
                      num_anchors: int) -> Tuple[Tensor, Tensor]:
    """Gives each anchor positive for one or more GTs to the GT with the highest score.

    Ties go to the lowest GT index (as ``argmax``). Fixed shapes, nothing dense: a
    ``scatter_reduce(amax)`` of the scores of the positive (GT, candidate) pairs over the anchor
    indices, then ``amin`` over the tied GTs.

    Args:
        cand_idx: Tensor[B, G, K] int64 anchor index of every candidate (distinct within a GT).
        is_pos: Tensor[B, G, K] bool.
        score: Tensor[B, G, K] the ranking score (IoU for ATSS, P + Q for Dynamic ATSS).
        num_anchors: N.

    Returns:
        gt_inds: Tensor[B, N] int64, -1 where the anchor is positive for no GT;
        won: Tensor[B, G, K] bool, the winning pair of every positive anchor (one per anchor), so
        callers can move any per-pair value to the anchors (:func:`scatter_pairs`).
    """
    b, g, k = cand_idx.shape
    device = cand_idx.device
    flat = flat_anchor_index(cand_idx, num_anchors)                              # [B*G*K]
    value = torch.where(is_pos, score, float("-inf")).reshape(-1)
    best = torch.full((b * num_anchors,), float("-inf"), dtype=score.dtype, device=device)
    best.scatter_reduce_(0, flat, value, reduce="amax", include_self=True)
    tied = is_pos.reshape(-1) & (value == best[flat])
    gt_of_pair = torch.arange(g, device=device).view(1, g, 1).expand(b, g, k).reshape(-1)
    gt_inds = torch.full((b * num_anchors,), g, dtype=torch.int64, device=device)
    gt_inds.scatter_reduce_(0, flat, torch.where(tied, gt_of_pair, g), reduce="amin",
                            include_self=True)
    won = tied & (gt_of_pair == gt_inds[flat])
    gt_inds = torch.where(gt_inds == g, -1, gt_inds).view(b, num_anchors)
    return gt_inds, won.view(b, g, k)


def flat_anchor_index(cand_idx: Tensor, num_anchors: int) -> Tensor:
    """Tensor[B, G, K] anchor indices -> Tensor[B*G*K] indices into the flattened ``[B * N]``."""
    offset = torch.arange(cand_idx.shape[0], device=cand_idx.device).view(-1, 1, 1) * num_anchors
    return (cand_idx + offset).reshape(-1)


def scatter_pairs(values: Tensor, cand_idx: Tensor, won: Tensor, num_anchors: int) -> Tensor:
    """Per-anchor value of the winning pairs: Tensor[B, N], ``values[b, g, k]`` at anchor
    ``cand_idx[b, g, k]`` where ``won``, 0 elsewhere (at most one winner per anchor, so the sum
    is exact in any order).

    Args:
        values: Tensor[B, G, K]; cand_idx: Tensor[B, G, K] int64; won: Tensor[B, G, K] bool.
    """
    b = cand_idx.shape[0]
    out = torch.zeros(b * num_anchors, dtype=values.dtype, device=values.device)
    out.scatter_add_(0, flat_anchor_index(cand_idx, num_anchors),
                     torch.where(won, values, 0).reshape(-1))
    return out.view(b, num_anchors)


class BaseAssigner:
    """Common call protocol: the batched :meth:`assign` (the training step) and a per-image call
    (checks its inputs; tests and tools), both under ``torch.no_grad``.

    Subclasses implement ``_assign(anchors_per_level, anchors, gt, predictions) -> (gt_inds
    [B, N] int64 (-1: not positive), quality [B, N], ignore [B, N] bool or None)`` for ``N >= 1``,
    on the padded :class:`GTBatch` (padding rows must never become positive). One that reads the
    predictions sets ``needs_predictions`` (the dense head then decodes them before assigning).
    ``tuning_keys`` names the config keys that decide whether a small GT gets a positive (for the
    training warning about GTs without one).
    """

    #: whether ``predictions`` must be given (Dynamic ATSS); the head passes them only then.
    needs_predictions: bool = False
    #: config keys that change which GTs get a positive (shown in the "no positive" warning).
    tuning_keys: Tuple[str, ...] = ()

    @torch.no_grad()
    def assign(self, anchors_per_level: Sequence[Tensor], gt: GTBatch,
               predictions: Optional[Predictions] = None) -> BatchAssignment:
        """Assigns the anchors of a batch; no host-device synchronisation.

        Args:
            anchors_per_level: list of Tensor[N_l, 4] anchors per FPN level (xyxy pixels), shared
                by the images.
            gt: the batch's padded GTs (:meth:`GTBatch.from_lists`).
            predictions: batched detached :class:`Predictions` (boxes [B, N, 4]) for
                prediction-aware assigners.

        Returns:
            :class:`BatchAssignment` over the ``N = sum N_l`` anchors in level order.
        """
        anchors = torch.cat(list(anchors_per_level), dim=0)
        b, n = gt.boxes.shape[0], anchors.shape[0]
        if self.needs_predictions and (predictions is None or predictions.boxes is None):
            raise ValueError(f"{type(self).__name__} needs pred_boxes: the decoded, detached "
                             "box predictions Tensor[B, N, 4] of the anchors (level order)")
        if predictions is not None and predictions.boxes is not None and \
                tuple(predictions.boxes.shape) != (b, n, 4):
            raise ValueError(f"{type(self).__name__}: pred_boxes must be [B, N, 4] = [{b}, {n}, 4], "
                             f"got {tuple(predictions.boxes.shape)}")
        gt = GTBatch(gt.boxes.to(anchors.dtype), gt.labels.to(torch.int64), gt.valid)
        if n == 0:
            gt_inds = torch.full((b, 0), -1, dtype=torch.int64, device=anchors.device)
            quality, ignore = anchors.new_zeros(b, 0), None
        else:
            if predictions is not None:
                predictions = Predictions(
                    boxes=None if predictions.boxes is None
                    else predictions.boxes.detach().to(anchors.dtype),
                    scores=None if predictions.scores is None else predictions.scores.detach())
            gt_inds, quality, ignore = self._assign(list(anchors_per_level), anchors, gt,
                                                    predictions)
        pos = gt_inds >= 0
        labels = torch.where(pos, gather_gt(gt.labels, gt_inds), 0)
        if ignore is not None:
            labels = torch.where(ignore, -1, labels)
        return BatchAssignment(
            labels=labels,
            matched_gt=torch.where(pos[..., None], gather_gt(gt.boxes, gt_inds), 0),
            quality=torch.where(pos, quality, 0), pos=pos, gt_inds=gt_inds,
            stats=unmatched_gt_stats(gt, gt_has_positive(gt_inds, gt.valid.shape[1])))

    def __call__(
        self,
        anchors_per_level: Sequence[Tensor],
        gt_boxes: Tensor,
        gt_labels: Tensor,
        predictions: "Optional[Predictions | Tensor]" = None,
    ) -> AssignResult:
        """Assigns the anchors of one image (a batch of one; see :meth:`assign`).

        Args:
            anchors_per_level: list of Tensor[N_l, 4] anchors per FPN level (xyxy pixels).
            gt_boxes: Tensor[G, 4] xyxy pixels.
            gt_labels: Tensor[G] int, classes 1..C.
            predictions: the image's detached :class:`Predictions` (boxes [N, 4], scores [N, C])
                for prediction-aware assigners; a bare Tensor[N, 4] means ``Predictions(boxes=it)``.

        Returns:
            AssignResult over the ``N = sum N_l`` anchors in level order.
        """
        if len(anchors_per_level) == 0:
            raise ValueError(f"{type(self).__name__}: anchors_per_level is empty")
        for i, a in enumerate(anchors_per_level):
            if a.dim() != 2 or a.shape[1] != 4:
                raise ValueError(f"{type(self).__name__}: anchors_per_level[{i}] must be [N_l, 4], "
                                 f"got {tuple(a.shape)}")
        if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
            gt_boxes = gt_boxes.reshape(-1, 4) if gt_boxes.numel() == 0 else gt_boxes
            if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
                raise ValueError(f"{type(self).__name__}: gt_boxes must be [G, 4], "
                                 f"got {tuple(gt_boxes.shape)}")
        if gt_labels.shape[0] != gt_boxes.shape[0]:
            raise ValueError(f"{type(self).__name__}: {gt_labels.shape[0]} gt_labels for "
                             f"{gt_boxes.shape[0]} gt_boxes")
        if isinstance(predictions, Tensor):
            predictions = Predictions(boxes=predictions)
        n = sum(int(a.shape[0]) for a in anchors_per_level)
        if predictions is not None:
            if predictions.boxes is not None and tuple(predictions.boxes.shape) != (n, 4):
                raise ValueError(f"{type(self).__name__}: pred_boxes must be [N, 4] = "
                                 f"[{n}, 4], got {tuple(predictions.boxes.shape)}")
            predictions = Predictions(
                boxes=None if predictions.boxes is None else predictions.boxes[None],
                scores=None if predictions.scores is None else predictions.scores[None])
        device = anchors_per_level[0].device
        gt = GTBatch.from_lists([gt_boxes], [gt_labels], device=device,
                                dtype=anchors_per_level[0].dtype)
        return self.assign(anchors_per_level, gt, predictions).image(0)

    def _assign(self, anchors_per_level: List[Tensor], anchors: Tensor, gt: GTBatch,
                predictions: Optional[Predictions]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        raise NotImplementedError
