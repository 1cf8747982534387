"""What every assigner shares: the result type, input checks and the candidate machinery.

An assigner labels the ``N`` anchors of one image (all FPN levels concatenated, level order) from
that image's ``G`` ground-truth boxes. The ATSS family works on a small candidate set per GT
(the ``k`` anchors with the nearest centres on every level), so nothing here builds a dense
``[N, G]`` matrix: candidates are found by a chunked top-k over centre distances, their IoUs are
computed element-wise on gathered boxes (``[G, K]``), and an anchor claimed by several GTs is
resolved with ``scatter_reduce`` over anchor indices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from maskrcnn_benchmark.structures.box_ops import box_centers, point_box_distances

__all__ = [
    "AssignResult",
    "Predictions",
    "BaseAssigner",
    "select_candidates",
    "centers_inside",
    "resolve_conflicts",
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
class Predictions:
    """The detached predictions of one image that a prediction-aware assigner may read.

    Attributes:
        boxes: Tensor[N, 4] decoded boxes (xyxy pixels, level order), or None.
        scores: Tensor[N, C] class probabilities, or None.
    """

    boxes: Optional[Tensor] = None
    scores: Optional[Tensor] = None


@dataclass
class AssignResult:
    """Assignment of the ``N`` anchors of one image.

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
        return int(self.pos_mask.sum())

    @classmethod
    def background(cls, num_anchors: int, device, dtype=torch.float32) -> "AssignResult":
        """Everything background (the result for an image with no GT box)."""
        return cls(
            labels=torch.zeros(num_anchors, dtype=torch.int64, device=device),
            gt_inds=torch.full((num_anchors,), -1, dtype=torch.int64, device=device),
            quality=torch.zeros(num_anchors, dtype=dtype, device=device),
        )

    @classmethod
    def from_gt_inds(cls, gt_inds: Tensor, gt_labels: Tensor, quality: Tensor) -> "AssignResult":
        """Builds labels from ``gt_inds`` (Tensor[N] int64, -1 = background) and per-GT labels.

        ``quality`` (Tensor[N]) is zeroed where ``gt_inds`` is -1.
        """
        pos = gt_inds >= 0
        labels = torch.zeros_like(gt_inds)
        labels[pos] = gt_labels.to(torch.int64)[gt_inds[pos]]
        return cls(labels=labels, gt_inds=gt_inds, quality=torch.where(pos, quality, 0))


def unbiased_std(x: Tensor, dim: int) -> Tensor:
    """``torch.std`` (unbiased) along ``dim``; 0 instead of NaN when there is a single sample."""
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
        points: Tensor[G, K, 2] (or Tensor[M, 2] with gt_boxes Tensor[M, 4]).
        gt_boxes: Tensor[G, 4], broadcast over K.

    Returns:
        Tensor[G, K] bool: ``min(x - x1, y - y1, x2 - x, y2 - y) > margin``.
    """
    if points.dim() == 3:
        gt_boxes = gt_boxes[:, None, :]
    ltrb = point_box_distances(points, gt_boxes)
    return ltrb.amin(dim=-1) > margin


def resolve_conflicts(
    cand_idx: Tensor, is_pos: Tensor, score: Tensor, num_anchors: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Gives each anchor positive for one or more GTs to the GT with the highest score.

    Ties go to the lowest GT index (as ``argmax``). Nothing dense: a ``scatter_reduce(amax)`` of
    the positive (GT, candidate) pairs over anchor indices, then ``amin`` over the tied GTs.

    Args:
        cand_idx: Tensor[G, K] int64 anchor index of every candidate.
        is_pos: Tensor[G, K] bool.
        score: Tensor[G, K] the ranking score (IoU for ATSS, P + Q for Dynamic ATSS).
        num_anchors: N.

    Returns:
        gt_inds: Tensor[N] int64, -1 where the anchor is positive for no GT;
        pair_gt, pair_k: Tensor[P] int64 (GT, candidate column) of the winning pair of every
        positive anchor, so callers can read any per-pair value (``x[pair_gt, pair_k]``);
        ``cand_idx[pair_gt, pair_k]`` are the positive anchors.
    """
    device = cand_idx.device
    gt_of_pair, k_of_pair = is_pos.nonzero(as_tuple=True)
    anchor = cand_idx[gt_of_pair, k_of_pair]
    value = score[gt_of_pair, k_of_pair]
    best = torch.full((num_anchors,), float("-inf"), dtype=score.dtype, device=device)
    best.scatter_reduce_(0, anchor, value, reduce="amax", include_self=True)
    tied = value == best[anchor]
    gt_inds = torch.full((num_anchors,), is_pos.shape[0], dtype=torch.int64, device=device)
    gt_inds.scatter_reduce_(0, anchor[tied], gt_of_pair[tied], reduce="amin", include_self=True)
    won = tied & (gt_of_pair == gt_inds[anchor])
    gt_inds[gt_inds == is_pos.shape[0]] = -1
    return gt_inds, gt_of_pair[won], k_of_pair[won]


class BaseAssigner:
    """Common call protocol: checks inputs, handles the empty cases, runs under ``no_grad``.

    Subclasses implement ``_assign(anchors_per_level, anchors, gt_boxes, gt_labels, predictions)``
    for ``G >= 1`` and ``N >= 1``; one that reads the predictions sets ``needs_predictions``
    (the dense head then decodes them before assigning).
    """

    #: whether ``predictions`` must be given (Dynamic ATSS); the head passes them only then.
    needs_predictions: bool = False

    def __call__(
        self,
        anchors_per_level: Sequence[Tensor],
        gt_boxes: Tensor,
        gt_labels: Tensor,
        predictions: "Optional[Predictions | Tensor]" = None,
    ) -> AssignResult:
        """Assigns the anchors of one image.

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
        with torch.no_grad():
            anchors = torch.cat(list(anchors_per_level), dim=0)
            pred_boxes = None if predictions is None else predictions.boxes
            if pred_boxes is not None and tuple(pred_boxes.shape) != (anchors.shape[0], 4):
                raise ValueError(f"{type(self).__name__}: pred_boxes must be [N, 4] = "
                                 f"[{anchors.shape[0]}, 4], got {tuple(pred_boxes.shape)}")
            if self.needs_predictions and pred_boxes is None:
                raise ValueError(f"{type(self).__name__} needs pred_boxes: the decoded, detached "
                                 "box predictions Tensor[N, 4] of the image's anchors (level order)")
            if gt_boxes.shape[0] == 0 or anchors.shape[0] == 0:
                return AssignResult.background(anchors.shape[0], anchors.device, anchors.dtype)
            gt_boxes = gt_boxes.to(anchors.dtype)
            if predictions is not None:
                predictions = Predictions(
                    boxes=None if pred_boxes is None else pred_boxes.detach().to(anchors.dtype),
                    scores=None if predictions.scores is None else predictions.scores.detach())
            return self._assign(list(anchors_per_level), anchors, gt_boxes, gt_labels, predictions)

    def _assign(self, anchors_per_level: List[Tensor], anchors: Tensor, gt_boxes: Tensor,
                gt_labels: Tensor, predictions: Optional[Predictions]) -> AssignResult:
        raise NotImplementedError
