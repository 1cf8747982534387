"""Pascal VOC box evaluation: AP at IoU > 0.5 per class and their mean (mAP), with either the
VOC2007 11-point metric or the area under the interpolated precision-recall curve (VOC2010+).

The matching is the VOC devkit's: detections of a class, over all images, in decreasing score
order; each looks only at the ground-truth box it overlaps most (IoU > 0.5 to count); it is a true
positive if that box is not ``difficult`` and not yet taken, ignored (neither true nor false) if it
is ``difficult``, a false positive otherwise. As each detection's best box does not depend on the
others, this is computed without a loop over detections: the true positives are the first
detection (in score order) of each ground-truth box. Boxes are in the toolkit's continuous frame
(see :mod:`maskrcnn_benchmark.data.datasets.voc`), where IoUs equal the devkit's "+1" IoUs.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from maskrcnn_benchmark.structures.bounding_box import BoxList

from .report import EvaluationResult, format_table, plot_pr_curves

__all__ = ["evaluate", "voc_ap", "match_detections", "VOC_METRICS"]

VOC_METRICS = ("area", "11point")

Predictions = Union[Mapping[int, BoxList], Sequence[BoxList]]


def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: str = "area") -> float:
    """AP of one class from its cumulative ``recall`` / ``precision`` (float[D], detections in score order).

    ``"11point"``: mean over t in {0, 0.1, ..., 1} of the best precision at recall >= t (0 if none).
    ``"area"``: the area under the precision envelope (precision made non-increasing in recall).
    """
    if metric not in VOC_METRICS:
        raise ValueError(f"VOC metric must be one of {VOC_METRICS}, got {metric!r}")
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if metric == "11point":
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0.0, 1.0, 11)]))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU float64[N, M] of continuous xyxy boxes (0 where the union is empty)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_detections(scores: np.ndarray, best_gt: np.ndarray, best_iou: np.ndarray, gt_difficult: np.ndarray,
                     iou_thresh: float = 0.5) -> Tuple[np.ndarray, np.ndarray]:
    """True / false positives of one class's detections (the devkit's greedy matching, vectorised).

    Args:
        scores: float[D]; best_gt: int[D] global index of each detection's most-overlapping ground
            truth of its image and class (-1: none); best_iou: float[D] that IoU;
        gt_difficult: bool[G] over the global ground-truth indices.

    Returns:
        ``(tp, fp)`` float[D'] in decreasing score order, the detections on difficult boxes left out.
    """
    order = np.argsort(-scores, kind="stable")
    gt, iou = best_gt[order], best_iou[order]
    hit = (iou > iou_thresh) & (gt >= 0)
    difficult = hit & gt_difficult[np.where(gt >= 0, gt, 0)]
    keep = ~difficult
    gt, hit = gt[keep], hit[keep]
    tp = np.zeros(len(gt), dtype=np.float64)
    hit_idx = np.nonzero(hit)[0]
    _, first = np.unique(gt[hit_idx], return_index=True)  # first detection of each box, in score order
    tp[hit_idx[first]] = 1.0
    return tp, 1.0 - tp


def _as_dict(predictions: Predictions) -> Dict[int, BoxList]:
    if isinstance(predictions, Mapping):
        return {int(k): v for k, v in predictions.items()}
    return dict(enumerate(predictions))


def evaluate(dataset, predictions: Predictions, output_folder: Optional[str] = None,
             logger: Optional[logging.Logger] = None, metric: str = "area",
             iou_thresh: float = 0.5, pr_curves: bool = True) -> EvaluationResult:
    """VOC AP50 of ``predictions`` on a :class:`PascalVOCDataset`.

    Args:
        predictions: dataset index -> BoxList in the ORIGINAL image size (``scores``, ``labels``
            1..K); the images evaluated are those with an entry.
        metric: ``"area"`` or ``"11point"`` (``TEST.VOC_METRIC``).

    Returns:
        ``{"mAP"}`` (mean over the classes with non-difficult ground truth), with ``.per_class``
        {class: {"AP50"}} (-1 for a class without ground truth, left out of the mean) and
        ``.info`` (``metric``, ``pr_curves``: ``output_folder/pr_curves.png`` or None).
    """
    logger = logger or logging.getLogger(__name__)
    if metric not in VOC_METRICS:
        raise ValueError(f"TEST.VOC_METRIC must be one of {VOC_METRICS}, got {metric!r}")
    preds = _as_dict(predictions)
    num_classes = dataset.num_classes
    gt_labels, gt_difficult = [], []
    det_scores, det_labels, det_gt, det_iou = [], [], [], []
    offset = 0
    for idx, pred in sorted(preds.items()):
        boxes, labels, difficult = dataset.get_annotation(idx)
        info = dataset.get_img_info(idx)
        if tuple(pred.size) != (info["width"], info["height"]):
            raise ValueError(f"prediction for image index {idx} has image size {pred.size} (w, h) but the "
                             f"original image is {(info['width'], info['height'])}; resize predictions first")
        p_boxes = pred.bbox.detach().cpu().double().numpy()
        p_labels = pred.get_field("labels").detach().cpu().numpy().astype(np.int64)
        bad = set(p_labels.tolist()) - set(range(1, num_classes + 1))
        if bad:
            raise ValueError(f"prediction for image index {idx} has labels {sorted(bad)} outside 1..{num_classes}")
        iou = _iou(p_boxes, boxes.astype(np.float64))
        iou = np.where(p_labels[:, None] == labels[None, :], iou, -1.0)
        has = iou.shape[1] > 0
        best = iou.argmax(1) if has else np.zeros(len(p_boxes), np.int64)
        best_iou = iou[np.arange(len(p_boxes)), best] if has else np.full(len(p_boxes), -1.0)
        det_gt.append(np.where(best_iou >= 0, best + offset, -1))
        det_iou.append(best_iou)
        det_scores.append(pred.get_field("scores").detach().cpu().double().numpy())
        det_labels.append(p_labels)
        gt_labels.append(labels)
        gt_difficult.append(difficult.astype(bool))
        offset += len(labels)
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    gt_labels, gt_difficult = cat(gt_labels, np.int64), cat(gt_difficult, bool)
    det_scores, det_labels = cat(det_scores, np.float64), cat(det_labels, np.int64)
    det_gt, det_iou = cat(det_gt, np.int64), cat(det_iou, np.float64)

    names = dataset.class_names[1:]
    recall_grid = np.linspace(0.0, 1.0, 101)
    envelope = np.full((len(recall_grid), num_classes), -1.0)
    result = EvaluationResult()
    for c in range(1, num_classes + 1):
        npos = int(((gt_labels == c) & ~gt_difficult).sum())
        if npos == 0:
            result.per_class[names[c - 1]] = {"AP50": -1.0}
            continue
        sel = det_labels == c
        tp, fp = match_detections(det_scores[sel], det_gt[sel], det_iou[sel], gt_difficult, iou_thresh)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / npos
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        result.per_class[names[c - 1]] = {"AP50": voc_ap(rec, prec, metric)}
        envelope[:, c - 1] = [prec[rec >= r].max() if (rec >= r).any() else 0.0 for r in recall_grid]
    valid = [v["AP50"] for v in result.per_class.values() if v["AP50"] >= 0]
    result["mAP"] = float(np.mean(valid)) if valid else 0.0
    result.info = {"metric": metric, "iou_thresh": iou_thresh}
    logger.info("VOC %s mAP (IoU > %.2f): %.4f", metric, iou_thresh, result["mAP"])
    logger.info("per-class VOC AP50 (%s):\n%s", metric, format_table(result.per_class, ("AP50",)))
    if output_folder and pr_curves:
        result.info["pr_curves"] = plot_pr_curves(os.path.join(output_folder, "pr_curves.png"), recall_grid,
                                                  {"IoU 0.50": envelope}, names, logger)
    return result
