"""Inference over a test data loader (one or many processes, optionally with test-time
augmentation) and the dataset's evaluation (COCO or Pascal VOC)."""
from __future__ import annotations

import logging
import os
import re
import time
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.utils.comm import all_gather, get_world_size, is_main_process, synchronize
from maskrcnn_benchmark.utils.io import atomic_write_json
from maskrcnn_benchmark.utils.legacy_plus_one import legacy_plus_one_from_config
from maskrcnn_benchmark.utils.metric_logger import format_eta

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def dataset_folder_name(name: str) -> str:
    """A folder name for a DATASETS.TEST entry: the catalog name, or for ``"<ann.json>:<images>"`` the
    annotation file's stem, for ``"<VOC root>:<split>"`` ``<root folder name>_<split>``; characters
    other than ``[A-Za-z0-9._-]`` become ``_``."""
    from maskrcnn_benchmark.config.paths_catalog import split_voc_path

    voc = split_voc_path(name) if ":" in name else None
    if voc is not None:
        name = f"{os.path.basename(os.path.normpath(voc[0]))}_{voc[1]}"
    elif ":" in name or os.sep in name:
        name = os.path.splitext(os.path.basename(name.split(":")[0]))[0] or name
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


@torch.no_grad()
def compute_on_dataset(model: nn.Module, data_loader, device: torch.device,
                       bbox_aug: Optional[Callable] = None,
                       legacy_plus_one_resize: bool = False) -> Dict[int, BoxList]:
    """Run ``model`` (eval mode) over ``data_loader``; predictions resized to each ORIGINAL image size.

    Args:
        bbox_aug: None, or a test-time augmentation ``bbox_aug(model, images) -> list of BoxList``
            (:class:`maskrcnn_benchmark.engine.bbox_aug.BBoxAugmentor`; the loader then yields the
            images at their original size, see ``tta_input_transforms``).
        legacy_plus_one_resize: rescale as the original "+1" code (``BoxList.resize(legacy_plus_one=)``,
            ``MODEL.LEGACY_PLUS_ONE``).

    Returns: {dataset index: BoxList on the CPU in the original image's (width, height)}.
    """
    model.eval()
    dataset = data_loader.dataset
    results: Dict[int, BoxList] = {}
    for images, _targets, indices in data_loader:
        images = images.to(device, non_blocking=True)  # pinned by the loader on CUDA: no sync
        outputs = bbox_aug(model, images) if bbox_aug is not None else model(images)
        for idx, pred in zip(indices, outputs):
            info = dataset.get_img_info(int(idx))
            # dense detectors return host BoxLists already (one copy per batch): .to is a no-op
            results[int(idx)] = pred.to("cpu").resize((info["width"], info["height"]),
                                                      legacy_plus_one=legacy_plus_one_resize)
    return results


def gather_predictions(predictions: Dict[int, BoxList], num_images: Optional[int] = None,
                       logger: Optional[logging.Logger] = None) -> Optional[Dict[int, BoxList]]:
    """Gather per-rank ``{index: BoxList}`` on every rank; rank 0 gets them merged (duplicates from padded
    samplers dropped) and ordered by index, other ranks get None."""
    parts = all_gather(predictions)
    if not is_main_process():
        return None
    merged: Dict[int, BoxList] = {}
    for part in parts:
        for idx, pred in part.items():
            merged.setdefault(idx, pred)
    merged = dict(sorted(merged.items()))
    if num_images is not None and len(merged) != num_images and logger is not None:
        logger.warning("Predictions cover %d of %d images; some images were not evaluated", len(merged), num_images)
    return merged


def inference(model: nn.Module, data_loader, dataset_name: str, output_folder: Optional[str] = None,
              device="cuda", logger: Optional[logging.Logger] = None, bbox_aug: Optional[Callable] = None,
              voc_metric: str = "area", legacy_plus_one_resize: bool = False,
              pr_curves: bool = False) -> Optional[Dict[str, float]]:
    """Detect on every image of ``data_loader`` (in every process; with test-time augmentation
    ``bbox_aug`` if given), gather on rank 0 and evaluate.

    Rank 0 writes ``output_folder/bbox.json`` (COCO results, via ``evaluate``), ``pr_curves.png``
    (with ``pr_curves`` and matplotlib) and ``output_folder/metrics.json`` (atomically: ``bbox`` the summary metrics,
    ``per_class`` {class: {metric: value}}, ``evaluation`` details), logs the summary and a per-class
    table, and returns the summary (COCO: ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}``; VOC:
    ``{"mAP"}``, ``voc_metric`` "area" or "11point"); other ranks return None.
    ``legacy_plus_one_resize``: see :func:`compute_on_dataset`.
    """
    from maskrcnn_benchmark.data.datasets.evaluation import evaluate

    logger = logger or logging.getLogger("maskrcnn_benchmark.inference")
    device = torch.device(device)
    dataset = data_loader.dataset
    logger.info("Start evaluation on %s (%d images) with %d process(es)", dataset_name, len(dataset),
                get_world_size())
    start = time.perf_counter()
    predictions = compute_on_dataset(model, data_loader, device, bbox_aug, legacy_plus_one_resize)
    synchronize()
    elapsed = time.perf_counter() - start
    logger.info("Inference time: %s (%.4f s / image per process)", format_eta(elapsed),
                elapsed * get_world_size() / max(len(dataset), 1))
    predictions = gather_predictions(predictions, len(dataset), logger)
    if predictions is None:
        return None
    if output_folder:
        os.makedirs(output_folder, exist_ok=True)
    evaluated = evaluate(dataset, predictions, output_folder, voc_metric=voc_metric, pr_curves=pr_curves)
    results = {k: float(v) for k, v in dict(evaluated).items()}
    logger.info("%s: %s", dataset_name, "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
    if output_folder:
        atomic_write_json(os.path.join(output_folder, "metrics.json"),
                          {"dataset": dataset_name, "num_images": len(predictions), "inference_time_s": elapsed,
                           "test_time_augmentation": repr(bbox_aug) if bbox_aug is not None else None,
                           "bbox": results, "per_class": getattr(evaluated, "per_class", {}),
                           "evaluation": getattr(evaluated, "info", {})}, indent=2)
    return results


def build_test_model(cfg, logger: Optional[logging.Logger] = None, purpose: str = "test"):
    """The model of ``cfg`` for evaluation: NUM_CLASSES 0 filled in from the training data, weights
    from MODEL.WEIGHT, else the last checkpoint of OUTPUT_DIR (a warning when there is neither).
    MODEL.WEIGHT must give every model tensor, be finite and not be a checkpoint of another
    architecture / head / backbone (errors naming the tensors or both names).

    Returns ``(cfg, model)`` (the cfg with NUM_CLASSES and MODEL.LEGACY_PLUS_ONE resolved, the latter
    from the weights' keys; the model on MODEL.DEVICE, made an inference-only model by
    ``prepare_for_inference``: not for training or saving). Shared by tools/test_net.py,
    tools/visualize_detections.py and tools/export_onnx.py (``purpose="export"``: the CPU speed-ups'
    "auto" stays off, see ``build_detection_model``).
    """
    from maskrcnn_benchmark.modeling.dense_heads import fill_num_classes_from_data
    from maskrcnn_benchmark.modeling.detector import build_detection_model, prepare_for_inference
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer, load_weight_file, model_identity
    from maskrcnn_benchmark.utils.legacy_plus_one import resolve_legacy_plus_one

    logger = logger or logging.getLogger("maskrcnn_benchmark.test")
    cfg = fill_num_classes_from_data(cfg)
    checkpointer = Checkpointer(nn.Identity(), save_dir=cfg.OUTPUT_DIR, save_to_disk=False, logger=logger)
    weights, resumed = None, None  # read once, before the model: their keys decide MODEL.LEGACY_PLUS_ONE
    if cfg.MODEL.WEIGHT:
        weights = load_weight_file(cfg.MODEL.WEIGHT, tuple(cfg.MODEL.RESNETS.STAGE_WITH_DCN))
    elif checkpointer.has_checkpoint():
        resumed = checkpointer.read_last()
    cfg = resolve_legacy_plus_one(cfg, weights if resumed is None else resumed["model"],
                                  f"MODEL.WEIGHT {cfg.MODEL.WEIGHT}" if weights is not None
                                  else f"the last checkpoint of {cfg.OUTPUT_DIR}", logger)
    model = build_detection_model(cfg, purpose).to(torch.device(cfg.MODEL.DEVICE))
    checkpointer.model = model
    if weights is not None:
        checkpointer.load_weights(cfg.MODEL.WEIGHT, min_match=cfg.MODEL.WEIGHT_MIN_MATCH, identity=model_identity(cfg),
                                  for_inference=True, state_dict=weights)
    elif resumed is not None:
        checkpointer.restore(resumed)
    else:
        logger.warning("MODEL.WEIGHT is empty and %s has no checkpoint: using an untrained model",
                       cfg.OUTPUT_DIR)
    return cfg, prepare_for_inference(model, cfg, logger)


def run_test(cfg, model: nn.Module, distributed: bool = False) -> Dict[str, Dict[str, float]]:
    """Evaluate ``model`` on every DATASETS.TEST entry; results in OUTPUT_DIR/inference/<dataset>/.

    Returns ``{dataset name: metrics}`` on rank 0 (empty on the others).
    """
    from maskrcnn_benchmark.data import make_data_loader
    from maskrcnn_benchmark.engine.bbox_aug import build_bbox_augmentor, tta_input_transforms

    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    was_training = model.training
    bbox_aug = build_bbox_augmentor(cfg)
    loaders: List = make_data_loader(cfg, is_train=False, is_distributed=distributed,
                                     transforms=tta_input_transforms() if bbox_aug is not None else None)
    all_results: Dict[str, Dict[str, float]] = {}
    for name, loader in zip(cfg.DATASETS.TEST, loaders):
        folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_folder_name(name)) if cfg.OUTPUT_DIR else None
        results = inference(model, loader, name, folder, device=cfg.MODEL.DEVICE, bbox_aug=bbox_aug,
                            voc_metric=cfg.TEST.VOC_METRIC,
                            legacy_plus_one_resize=legacy_plus_one_from_config(cfg), pr_curves=cfg.TEST.PR_CURVES)
        if results is not None:
            all_results[name] = results
        synchronize()
    model.train(was_training)
    return all_results
