"""COCO box evaluation of detector outputs: faster-coco-eval when installed (same numbers, faster),
else pycocotools; summary metrics, a per-class AP / AP50 / AR100 table and precision-recall curves."""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.utils.io import atomic_write_json

from .report import EvaluationResult, format_table, plot_pr_curves

__all__ = ["evaluate", "prepare_for_coco_detection", "detection_columns", "results_from_columns", "per_class_metrics", "coco_backend", "METRICS"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

Predictions = Union[Mapping[int, BoxList], Sequence[BoxList]]


def _as_dict(predictions: Predictions) -> Dict[int, BoxList]:
    if isinstance(predictions, Mapping):
        return {int(k): v for k, v in predictions.items()}
    return dict(enumerate(predictions))


def detection_columns(dataset, predictions: Predictions) -> Dict[str, np.ndarray]:
    """All detections as columns, built with one concatenation (no per-box Python work).

    Args:
        dataset: a COCODataset (``.image_ids``, ``.contiguous_category_id_to_json_id``, ``get_img_info``).
        predictions: dataset index -> BoxList in the ORIGINAL image size with fields ``"scores"``
            (Tensor[K]) and ``"labels"`` (Tensor[K] int64, contiguous 1..num_classes).

    Returns:
        ``{"image_id": int64[N], "category_id": int64[N] (json ids), "bbox": float64[N, 4] xywh,
        "score": float64[N]}``, images in ascending dataset index, boxes in prediction order within
        an image; full precision (the float32 values exactly, no rounding).
    """
    to_json = dataset.contiguous_category_id_to_json_id
    lut = np.zeros(len(to_json) + 1, dtype=np.int64)
    lut[list(to_json)] = list(to_json.values())
    image_ids = np.asarray(dataset.image_ids, dtype=np.int64)
    boxes, scores, labels, counts, rows = [], [], [], [], []
    for idx, pred in sorted(_as_dict(predictions).items()):
        if len(pred) == 0:
            continue
        info = dataset.get_img_info(idx)
        if tuple(pred.size) != (info["width"], info["height"]):
            raise ValueError(f"prediction for image index {idx} has image size {pred.size} (w, h) but the "
                             f"original image is {(info['width'], info['height'])}; resize predictions "
                             f"to the original image size before evaluation")
        boxes.append(pred.bbox.detach())
        scores.append(pred.get_field("scores").detach())
        labels.append(pred.get_field("labels").detach())
        counts.append(len(pred))
        rows.append(idx)
    if not boxes:
        return {"image_id": np.zeros(0, np.int64), "category_id": np.zeros(0, np.int64),
                "bbox": np.zeros((0, 4), np.float64), "score": np.zeros(0, np.float64)}
    xyxy = torch.cat([b.cpu() for b in boxes])
    x1, y1, x2, y2 = xyxy.unbind(-1)
    xywh = torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)  # in the boxes' dtype, as BoxList.xywh
    lab = torch.cat([t.cpu() for t in labels]).numpy().astype(np.int64)
    image_rows = np.repeat(np.asarray(rows, dtype=np.int64), counts)
    bad = (lab < 1) | (lab > len(to_json))  # contiguous labels are 1..K
    if bad.any():
        first = image_rows[np.argmax(bad)]
        unknown = sorted(set(lab[bad & (image_rows == first)].tolist()))
        raise ValueError(f"prediction for image index {int(first)} has labels {unknown} outside 1..{len(to_json)}")
    return {"image_id": image_ids[image_rows], "category_id": lut[lab],
            "bbox": xywh.double().numpy(), "score": torch.cat([s.cpu() for s in scores]).double().numpy()}


def results_from_columns(columns: Mapping[str, np.ndarray]) -> List[dict]:
    """COCO result entries ``{"image_id", "category_id", "bbox" [x, y, w, h], "score"}`` (Python
    numbers, full precision) from :func:`detection_columns`: the list the json file and the COCO
    APIs take, built in one pass over ``tolist()`` columns."""
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(columns["image_id"].tolist(), columns["category_id"].tolist(),
                                  columns["bbox"].tolist(), columns["score"].tolist())]


def prepare_for_coco_detection(dataset, predictions: Predictions) -> List[dict]:
    """COCO result entries ``{"image_id", "category_id" (json id), "bbox" [x, y, w, h], "score"}``
    at full precision (see :func:`detection_columns` for the arguments)."""
    return results_from_columns(detection_columns(dataset, predictions))


def coco_backend(prefer_faster: bool = True) -> str:
    """``"faster_coco_eval"`` when that package is importable (and ``prefer_faster``), else ``"pycocotools"``."""
    if prefer_faster:
        try:
            import faster_coco_eval  # noqa: F401
            return "faster_coco_eval"
        except ImportError:
            pass
    return "pycocotools"


def _run_cocoeval(gt_json: dict, results: List[dict], img_ids: List[int], backend: str):
    """evaluate + accumulate + summarize with ``backend``; returns (COCOeval, summary text).

    ``gt_json`` (the ground-truth json dict) and ``results`` (COCO result entries) are handed over:
    the backends index and annotate them in place, so no copy is made."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCO as FasterCOCO, COCOeval_faster

            gt = FasterCOCO(gt_json, use_deepcopy=False)
            coco_eval = COCOeval_faster(gt, gt.loadRes(results), "bbox", print_function=print)
        elif backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            gt = COCO()
            gt.dataset = gt_json
            gt.createIndex()
            coco_eval = COCOeval(gt, gt.loadRes(results), "bbox")
        else:
            raise ValueError(f"unknown COCO evaluation backend {backend!r}")
        coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    summary = "\n".join(line for line in buf.getvalue().splitlines() if line.lstrip().startswith("Average"))
    return coco_eval, summary


def per_class_metrics(precision: np.ndarray, recall: np.ndarray, iou_thrs: Sequence[float],
                      class_names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Per-class AP (IoU 0.50:0.95), AP50 and AR100 from COCOeval's accumulated arrays.

    Args:
        precision: ``eval["precision"]`` [T IoUs, R recall points, K classes, A areas, M maxDets]
            (-1 where undefined); recall: ``eval["recall"]`` [T, K, A, M].
        iou_thrs: the T IoU thresholds; class_names: the K names (in the category order evaluated).

    Returns:
        {name: {"AP", "AP50", "AR100"}} over all areas at 100 detections per image; -1 for a class
        without ground truth (as pycocotools' summary).
    """
    t50 = int(np.argmin(np.abs(np.asarray(iou_thrs) - 0.5)))

    def mean_valid(a: np.ndarray) -> float:
        a = a[a > -1]
        return float(a.mean()) if a.size else -1.0

    return {name: {"AP": mean_valid(precision[:, :, k, 0, -1]), "AP50": mean_valid(precision[t50, :, k, 0, -1]),
                   "AR100": mean_valid(recall[:, k, 0, -1])}
            for k, name in enumerate(class_names)}


def evaluate(dataset, predictions: Predictions, output_folder: Optional[str],
             logger: Optional[logging.Logger] = None, pr_curves: bool = True) -> EvaluationResult:
    """COCO bbox AP of ``predictions`` on ``dataset`` (faster-coco-eval if installed, else pycocotools).

    ``dataset``: a :class:`COCODataset` (or an object with its ``image_ids``, ``get_img_info``,
    ``class_names``, ``json_category_id_to_contiguous_id`` / ``contiguous_category_id_to_json_id`` and
    ``load_groundtruth_json``: the ground truth is read from the json only now, for the evaluation).

    The images evaluated are those with an entry in ``predictions`` (an empty BoxList counts as
    "no detections" for that image). Writes ``output_folder/bbox.json`` atomically (COCO results
    format) when ``output_folder`` is given, prints the standard 12-line summary, and returns
    ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as fractions in 0..1 (-1 where pycocotools has
    no ground truth for that area range; all 0 when there are no detections at all).
    The result also carries ``.per_class`` ({class name: {"AP", "AP50", "AR100"}}, logged as a
    table) and ``.info`` (``backend``; ``pr_curves``: the path of ``output_folder/pr_curves.png``,
    per class and overall at IoU 0.50 and 0.50:0.95, or None without matplotlib; drawn only with
    ``pr_curves=True``: with 80 classes the plot takes seconds, longer than the evaluation).
    """
    logger = logger or logging.getLogger(__name__)
    preds = _as_dict(predictions)
    columns = detection_columns(dataset, preds)
    results = results_from_columns(columns)
    if output_folder:
        os.makedirs(output_folder, exist_ok=True)
        finite = bool(np.isfinite(columns["bbox"]).all() and np.isfinite(columns["score"]).all())
        atomic_write_json(os.path.join(output_folder, "bbox.json"), results, fast=finite)
    if not results:
        logger.warning("no detections on %d images; reporting AP 0", len(preds))
        return EvaluationResult({k: 0.0 for k in METRICS})

    backend = coco_backend()
    img_ids = sorted(set(np.asarray(dataset.image_ids, dtype=np.int64)[list(preds)].tolist()))
    coco_eval, summary = _run_cocoeval(dataset.load_groundtruth_json(), results, img_ids, backend)
    print(summary, flush=True)
    stats = np.asarray(coco_eval.stats, dtype=np.float64)
    metrics = EvaluationResult({k: float(v) for k, v in zip(METRICS, stats[:6])})
    cat_ids = list(coco_eval.params.catIds)
    names = [dataset.class_names[dataset.json_category_id_to_contiguous_id[c]] for c in cat_ids]
    metrics.per_class = per_class_metrics(np.asarray(coco_eval.eval["precision"]),
                                          np.asarray(coco_eval.eval["recall"]), coco_eval.params.iouThrs, names)
    metrics.info = {"backend": backend}
    logger.info("bbox (%s): %s", backend, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    logger.info("per-class bbox metrics:\n%s", format_table(metrics.per_class, ("AP", "AP50", "AR100")))
    if output_folder and pr_curves:
        precision = np.asarray(coco_eval.eval["precision"])[:, :, :, 0, -1]  # [T, R, K]
        curves = {"IoU 0.50": precision[int(np.argmin(np.abs(coco_eval.params.iouThrs - 0.5)))],
                  "IoU 0.50:0.95": _mean_valid_axis0(precision)}
        metrics.info["pr_curves"] = plot_pr_curves(os.path.join(output_folder, "pr_curves.png"),
                                                   np.asarray(coco_eval.params.recThrs), curves, names, logger)
    return metrics


def _mean_valid_axis0(a: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of the entries > -1 (-1 where none is)."""
    valid = a > -1
    count = valid.sum(0)
    total = np.where(valid, a, 0.0).sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), -1.0)
