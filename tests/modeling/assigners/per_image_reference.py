"""Per-image reference assigners: the rules of ``modeling/assigners`` written one image at a time
with data-dependent shapes (``nonzero``, boolean masks, Python loops over GTs), as the code was
before the batched, fixed-shape rewrite. Tests compare the batched assigners against these.

Every function takes ``(anchors_per_level: list[Tensor[N_l, 4]], gt_boxes: Tensor[G, 4],
gt_labels: Tensor[G], ...)`` and returns ``(labels [N], gt_inds [N], quality [N])``.
"""
import math

import torch

from maskrcnn_benchmark.layers import box_iou, elementwise_iou
from maskrcnn_benchmark.structures.box_ops import box_area, box_centers, centerness, point_box_distances

MARGIN = 0.01


def _inside(points, boxes, margin=MARGIN):
    return point_box_distances(points, boxes).amin(dim=-1) > margin


def _std(x):
    return x.std() if x.numel() > 1 else x.new_zeros(())


def _result(n, gt_labels, winners):
    """``winners``: dict anchor -> (gt, quality)."""
    labels = torch.zeros(n, dtype=torch.int64)
    gt_inds = torch.full((n,), -1, dtype=torch.int64)
    quality = torch.zeros(n)
    for a, (g, q) in winners.items():
        labels[a], gt_inds[a], quality[a] = int(gt_labels[g]), g, float(q)
    return labels, gt_inds, quality


def _resolve(per_gt, n, gt_labels):
    """``per_gt``: list over GTs of lists of (anchor, score, quality) positives -> highest score
    wins, ties to the lowest GT."""
    winners, best = {}, {}
    for g, pairs in enumerate(per_gt):
        for a, score, q in pairs:
            if a not in best or score > best[a]:
                best[a], winners[a] = score, (g, q)
    return _result(n, gt_labels, winners)


def candidate_threshold(anchors_per_level, gt_boxes, gt_labels, topk, pred_boxes=None,
                        keep_best=False):
    """ATSS (``pred_boxes`` None) / Dynamic ATSS (``pred_boxes`` [N, 4])."""
    anchors = torch.cat(anchors_per_level)
    n = anchors.shape[0]
    per_gt = []
    for g in range(gt_boxes.shape[0]):
        box = gt_boxes[g]
        cand, start = [], 0
        for lvl in anchors_per_level:
            d = ((box_centers(lvl) - box_centers(box[None])) ** 2).sum(dim=1)
            k = min(topk, lvl.shape[0])
            cand.append(d.topk(k, largest=False, sorted=True).indices + start)
            start += lvl.shape[0]
        cand = torch.cat(cand)
        q = elementwise_iou(anchors[cand], box[None])
        if pred_boxes is None:
            score, thr, quality = q, q.mean() + _std(q), q
        else:
            p = elementwise_iou(pred_boxes[cand], box[None])
            score, thr, quality = p + q, p.mean() + q.mean() + _std(p) + _std(q), p
        inside = _inside(box_centers(anchors[cand]), box[None])
        pos = (score >= thr) & inside
        if keep_best and not pos.any() and inside.any():
            pos[torch.where(inside, score, -math.inf).argmax()] = True
        per_gt.append([(int(cand[i]), float(score[i]), float(quality[i]))
                       for i in pos.nonzero()[:, 0]])
    return _resolve(per_gt, n, gt_labels)


def topk_iou(anchors_per_level, gt_boxes, gt_labels, topk):
    anchors = torch.cat(anchors_per_level)
    n = anchors.shape[0]
    if gt_boxes.shape[0] == 0:
        return _result(n, gt_labels, {})
    ious = box_iou(gt_boxes, anchors)
    dist = ((box_centers(gt_boxes)[:, None] - box_centers(anchors)[None]) ** 2).sum(-1).sqrt()
    score = ious - dist / dist.max().clamp(min=1e-12) / 1000
    per_gt = []
    for g in range(gt_boxes.shape[0]):
        cand = score[g].topk(min(topk, n)).indices
        inside = _inside(box_centers(anchors[cand]), gt_boxes[g][None])
        per_gt.append([(int(a), float(ious[g, a]), float(ious[g, a])) for a in cand[inside]])
    return _resolve(per_gt, n, gt_labels)


def fcos(anchors_per_level, gt_boxes, gt_labels, strides, scale_ranges, radius=0.0, margin=0.0,
         iou_quality=False):
    """FCOS (``iou_quality`` False) / SSC (``margin`` 0.01, ``iou_quality`` True)."""
    labels, gt_inds, quality = [], [], []
    areas = box_area(gt_boxes)
    for level, lvl in enumerate(anchors_per_level):
        lo, hi = scale_ranges[level]
        for a in lvl:
            pt = box_centers(a[None])[0]
            best, best_g = math.inf, -1
            for g in range(gt_boxes.shape[0]):
                box = gt_boxes[g]
                ltrb = point_box_distances(pt, box)
                if radius > 0:
                    c, r = box_centers(box[None])[0], radius * strides[level]
                    region = torch.cat([torch.maximum(c - r, box[:2]), torch.minimum(c + r, box[2:])])
                    inside = bool(point_box_distances(pt, region).min() > 0)
                else:
                    inside = bool(ltrb.min() > margin)
                if inside and lo <= float(ltrb.max()) <= hi and float(areas[g]) < best:
                    best, best_g = float(areas[g]), g
            gt_inds.append(best_g)
            labels.append(int(gt_labels[best_g]) if best_g >= 0 else 0)
            if best_g < 0:
                quality.append(0.0)
            elif iou_quality:
                quality.append(float(elementwise_iou(a, gt_boxes[best_g])))
            else:
                quality.append(float(centerness(point_box_distances(pt, gt_boxes[best_g]))))
    return torch.tensor(labels), torch.tensor(gt_inds), torch.tensor(quality)


def max_iou(anchors_per_level, gt_boxes, gt_labels, fg, bg, low_quality=True,
            center_inside=False):
    anchors = torch.cat(anchors_per_level)
    n = anchors.shape[0]
    labels = torch.zeros(n, dtype=torch.int64)
    gt_inds = torch.full((n,), -1, dtype=torch.int64)
    quality = torch.zeros(n)
    if gt_boxes.shape[0] == 0:
        return labels, gt_inds, quality
    ious = box_iou(gt_boxes, anchors)
    best_iou, best_gt = ious.max(dim=0)
    pos = best_iou >= fg
    ignore = (best_iou >= bg) & ~pos
    if low_quality:
        for g in range(gt_boxes.shape[0]):
            m = ious[g].max()
            if m > 0:
                pos |= ious[g] == m
        ignore &= ~pos
    if center_inside:
        inside = _inside(box_centers(anchors), gt_boxes[best_gt])
        ignore |= pos & ~inside
        pos &= inside
    idx = pos.nonzero()[:, 0]
    labels[idx] = gt_labels[best_gt[idx]]
    gt_inds[idx] = best_gt[idx]
    quality[idx] = best_iou[idx]
    labels[ignore] = -1
    return labels, gt_inds, quality
