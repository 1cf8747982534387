"""A Python API for running a trained detector on images.

    from maskrcnn_benchmark.engine.predictor import Predictor

    predictor = Predictor("configs/atss/atss_R_50_FPN_1x.yaml", "model_final.pth", device="cpu")
    det = predictor(cv2.imread("image.jpg"))        # or predictor("image.jpg")
    det.boxes, det.scores, det.labels, det.names    # in the original image's pixels
    dets = predictor(["a.jpg", "b.jpg"])            # one forward pass for the list

The images go through the config's test transforms (``build_transforms(cfg, is_train=False)``)
and are batched exactly as ``tools/test_net.py`` batches them (one uint8 batch padded to
``DATALOADER.SIZE_DIVISIBILITY``, pinned and copied to the model's device, where the model
normalises it), so a Predictor gives the same detections as the evaluation
path (:func:`maskrcnn_benchmark.engine.inference.compute_on_dataset`) on the same batches.

Class names, first found of: the checkpoint's ``"class_names"`` entry (a list with
``"__background__"`` first, as ``COCODataset.class_names``); the categories of the json of
``DATASETS.TEST[0]`` (else ``DATASETS.TRAIN[0]``) when that file exists (the synthetic datasets'
names are known without generating them); else ``"class_<i>"``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.utils.checkpoint import checkpoint_metadata  # noqa: F401  (re-exported)
from maskrcnn_benchmark.utils.legacy_plus_one import legacy_plus_one_from_config, resolve_legacy_plus_one

__all__ = ["Detections", "Predictor", "read_image", "dataset_class_names", "checkpoint_metadata"]

logger = logging.getLogger("maskrcnn_benchmark.predictor")

ImageInput = Union[np.ndarray, str, "os.PathLike[str]"]


@dataclass
class Detections:
    """Detections of one image, in the original image's pixels, sorted by decreasing score.

    Attributes:
        boxes: float32 [N, 4] x1, y1, x2, y2 pixels of the image as given.
        scores: float32 [N] confidences in [0, 1].
        labels: int64 [N] contiguous class ids 1..K.
        names: the class name of each detection (N strings).
        image_size: (width, height) of the image as given.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: List[str]
    image_size: Tuple[int, int]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def from_boxlist(cls, boxlist: BoxList, class_names: Sequence[str]) -> "Detections":
        labels = boxlist.get_field("labels").to(torch.int64).cpu().numpy()
        names = [class_names[i] if 0 <= i < len(class_names) else f"class_{i}" for i in labels.tolist()]
        return cls(boxes=boxlist.bbox.float().cpu().numpy(), scores=boxlist.get_field("scores").float().cpu().numpy(),
                   labels=labels, names=names, image_size=tuple(int(s) for s in boxlist.size))


def read_image(image: ImageInput) -> np.ndarray:
    """An image path or array -> ``np.ndarray[H, W, 3]`` uint8 BGR (a grayscale HxW array is expanded).

    Raises:
        FileNotFoundError: a path that does not exist; CorruptImageError (an OSError): an undecodable
        or truncated file (named); ValueError: an array of the wrong shape / dtype.
    """
    if isinstance(image, (str, os.PathLike)):
        from maskrcnn_benchmark.data.datasets.base import decode_image_file

        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
        return decode_image_file(path)  # refuses truncated JPEG / PNG files, as the training loader does
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a BGR numpy image or a path, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an image of shape [H, W, 3] (BGR), got shape {list(image.shape)}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (0..255 BGR), got dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {list(image.shape)}")
    return image


def _json_class_names(ann_file: str) -> Optional[List[str]]:
    with open(ann_file, encoding="utf-8") as f:
        categories = json.load(f).get("categories", [])
    return ["__background__"] + [str(c["name"]) for c in sorted(categories, key=lambda c: c["id"])]


def dataset_class_names(cfg) -> Optional[List[str]]:
    """Class names (``"__background__"`` first) of DATASETS.TEST[0], else DATASETS.TRAIN[0], read from
    their json when it exists on disk (nothing is generated); None if neither can be read."""
    import importlib

    from maskrcnn_benchmark.config.paths_catalog import split_json_path

    catalog = importlib.import_module(cfg.PATHS_CATALOG).DatasetCatalog
    for name in list(cfg.DATASETS.TEST[:1]) + list(cfg.DATASETS.TRAIN[:1]):
        if name in getattr(catalog, "SYNTHETIC", {}):
            from maskrcnn_benchmark.data.synthetic import CATEGORIES

            return ["__background__"] + list(CATEGORIES)
        parts = split_json_path(name)
        if parts is not None:
            ann_file = parts[0]
        elif name in getattr(catalog, "DATASETS", {}):
            ann_file = os.path.join(catalog.data_dir(), catalog.DATASETS[name]["ann_file"])
        else:
            continue
        if os.path.isfile(ann_file):
            try:
                return _json_class_names(ann_file)
            except (OSError, ValueError, KeyError, TypeError) as e:
                logger.warning("cannot read class names from %s: %s", ann_file, e)
    return None


class Predictor:
    """Detector for single images or lists of images (BGR numpy arrays or paths).

    Args:
        config_file: yaml config ("" for the defaults).
        weights: weight file (any format MODEL.WEIGHT accepts); "" uses the config's MODEL.WEIGHT.
        opts: config overrides ``[KEY, VALUE, ...]``.
        device: "cpu", "cuda", "cuda:1", ... (None: MODEL.DEVICE, or "cpu" when CUDA is unavailable).
        score_threshold: drop detections below this score (0: keep what the head returns).
        cfg: an already merged config instead of ``config_file`` / ``opts``.

    ``NUM_CLASSES 0`` (take it from the data) is resolved from the class names, else from DATASETS.TRAIN.
    """

    def __init__(self, config_file: str = "", weights: str = "", opts: Optional[Sequence[Any]] = None,
                 device: Optional[str] = None, score_threshold: float = 0.0, cfg=None):
        from maskrcnn_benchmark.data.transforms import build_transforms
        from maskrcnn_benchmark.modeling.dense_heads.registry import fill_num_classes_from_data, resolve_num_classes
        from maskrcnn_benchmark.modeling.dense_heads import get_num_classes
        from maskrcnn_benchmark.modeling.detector import build_detection_model, prepare_for_inference
        from maskrcnn_benchmark.utils.checkpoint import (Checkpointer, load_weight_file, model_identity,
                                                         resolve_weight_path)
        from maskrcnn_benchmark.config import setup_cfg

        if cfg is None:
            cfg = setup_cfg(config_file, list(opts or []))
        if device is None:
            device = cfg.MODEL.DEVICE if (cfg.MODEL.DEVICE == "cpu" or torch.cuda.is_available()) else "cpu"
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = str(device)
        weights = weights or cfg.MODEL.WEIGHT
        cfg.MODEL.WEIGHT = weights
        cfg.freeze()

        path = resolve_weight_path(weights) if weights else ""
        names = checkpoint_metadata(path).get("class_names") if path else None
        if names is not None:
            names = [str(n) for n in names]
        else:
            names = dataset_class_names(cfg)
        if get_num_classes(cfg) == 0:
            if names is not None:
                cfg = resolve_num_classes(cfg, len(names) - 1, "(class names)")
            else:
                cfg = fill_num_classes_from_data(cfg)
        num_foreground = get_num_classes(cfg) - 1
        if names is None or len(names) != num_foreground + 1:
            if names is not None:
                logger.warning("%d class names found but the model has %d classes; using class_<i>",
                               len(names) - 1, num_foreground)
            names = ["__background__"] + [f"class_{i}" for i in range(1, num_foreground + 1)]
        self.cfg = cfg
        self.class_names: List[str] = names
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.score_threshold = float(score_threshold)
        self.transforms = build_transforms(cfg, is_train=False)
        self.size_divisibility = int(cfg.DATALOADER.SIZE_DIVISIBILITY)
        state = load_weight_file(weights, tuple(cfg.MODEL.RESNETS.STAGE_WITH_DCN)) if weights else None
        cfg = self.cfg = resolve_legacy_plus_one(cfg, state, f"the weights {weights}", logger)
        self.legacy_plus_one_resize = legacy_plus_one_from_config(cfg)
        self.model = build_detection_model(cfg, purpose="test")
        if weights:
            Checkpointer(self.model, save_to_disk=False, logger=logger).load_weights(
                weights, identity=model_identity(cfg), for_inference=True, state_dict=state)
        else:
            logger.warning("Predictor: no weights given (and MODEL.WEIGHT is empty): the model is untrained")
        prepare_for_inference(self.model.to(self.device), cfg, logger)

    @torch.inference_mode()
    def predict_boxlists(self, images: Sequence[ImageInput]) -> List[BoxList]:
        """One forward pass for ``images``; per image a CPU BoxList (fields "scores", "labels") resized to
        that image's original (width, height)."""
        from maskrcnn_benchmark.structures.image_list import to_image_list

        if len(images) == 0:
            return []
        originals = [read_image(image) for image in images]
        tensors = [self.transforms(image, None)[0] for image in originals]
        batch = to_image_list(tensors, self.size_divisibility)
        if self.device.type == "cuda":  # page-locked: an asynchronous copy, no sync
            batch = batch.pin_memory()
        batch = batch.to(self.device, non_blocking=True)
        outputs = self.model(batch)
        results = []
        for original, pred in zip(originals, outputs):
            pred = pred.to("cpu").resize((original.shape[1], original.shape[0]),
                                         legacy_plus_one=self.legacy_plus_one_resize)
            if self.score_threshold > 0:
                pred = pred[pred.get_field("scores") >= self.score_threshold]
            results.append(pred)
        return results

    def __call__(self, images: Union[ImageInput, Sequence[ImageInput]]) -> Union[Detections, List[Detections]]:
        """Detections for one image (array or path), or a list of them for a list / tuple (one batch)."""
        single = isinstance(images, (np.ndarray, str, os.PathLike))
        batch = [images] if single else list(images)
        detections = [Detections.from_boxlist(b, self.class_names) for b in self.predict_boxlists(batch)]
        return detections[0] if single else detections
