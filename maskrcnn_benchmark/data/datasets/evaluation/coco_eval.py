"""COCO box evaluation of detector outputs with pycocotools."""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from pycocotools.cocoeval import COCOeval

from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.utils.io import atomic_write_json

__all__ = ["evaluate", "prepare_for_coco_detection", "METRICS"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

Predictions = Union[Mapping[int, BoxList], Sequence[BoxList]]


def _as_dict(predictions: Predictions) -> Dict[int, BoxList]:
    if isinstance(predictions, Mapping):
        return {int(k): v for k, v in predictions.items()}
    return dict(enumerate(predictions))


def prepare_for_coco_detection(dataset, predictions: Predictions) -> List[dict]:
    """COCO result entries ``{"image_id", "category_id" (json id), "bbox" [x, y, w, h], "score"}``.

    Args:
        dataset: a COCODataset (``.ids``, ``.contiguous_category_id_to_json_id``, ``get_img_info``).
        predictions: dataset index -> BoxList in the ORIGINAL image size with fields ``"scores"``
            (Tensor[K]) and ``"labels"`` (Tensor[K] int64, contiguous 1..num_classes).
    """
    results: List[dict] = []
    to_json = dataset.contiguous_category_id_to_json_id
    for idx, pred in sorted(_as_dict(predictions).items()):
        if len(pred) == 0:
            continue
        info = dataset.get_img_info(idx)
        if tuple(pred.size) != (info["width"], info["height"]):
            raise ValueError(f"prediction for image index {idx} has image size {pred.size} (w, h) but the "
                             f"original image is {(info['width'], info['height'])}; resize predictions "
                             f"to the original image size before evaluation")
        xywh = pred.xywh().detach().cpu().double().numpy()
        scores = pred.get_field("scores").detach().cpu().double().numpy()
        labels = pred.get_field("labels").detach().cpu().numpy().tolist()
        unknown = set(labels) - set(to_json)
        if unknown:
            raise ValueError(f"prediction for image index {idx} has labels {sorted(unknown)} outside "
                             f"1..{len(to_json)}")
        image_id = dataset.ids[idx]
        results.extend({"image_id": image_id, "category_id": to_json[lab],
                        "bbox": [round(float(v), 3) for v in box], "score": round(float(s), 5)}
                       for box, s, lab in zip(xywh, scores, labels))
    return results


def evaluate(dataset, predictions: Predictions, output_folder: Optional[str],
             logger: Optional[logging.Logger] = None) -> Dict[str, float]:
    """COCO bbox AP of ``predictions`` on ``dataset``.

    The images evaluated are those with an entry in ``predictions`` (an empty BoxList counts as
    "no detections" for that image). Writes ``output_folder/bbox.json`` atomically (COCO results
    format) when ``output_folder`` is given, prints the standard 12-line summary, and returns
    ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as fractions in 0..1 (-1 where pycocotools has
    no ground truth for that area range; all 0 when there are no detections at all).
    """
    logger = logger or logging.getLogger(__name__)
    preds = _as_dict(predictions)
    results = prepare_for_coco_detection(dataset, preds)
    if output_folder:
        os.makedirs(output_folder, exist_ok=True)
        atomic_write_json(os.path.join(output_folder, "bbox.json"), results)
    if not results:
        logger.warning("no detections on %d images; reporting AP 0", len(preds))
        return {k: 0.0 for k in METRICS}

    coco_gt = dataset.coco
    with contextlib.redirect_stdout(io.StringIO()):  # loadRes prints timing lines
        coco_dt = coco_gt.loadRes(results)
    coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
    coco_eval.params.imgIds = sorted({dataset.ids[i] for i in preds})
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    summary = "\n".join(line for line in buf.getvalue().splitlines() if line.startswith(" Average"))
    print(summary, flush=True)
    stats = np.asarray(coco_eval.stats, dtype=np.float64)
    metrics = {k: float(v) for k, v in zip(METRICS, stats[:6])}
    logger.info("bbox: %s", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return metrics
