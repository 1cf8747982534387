#!/usr/bin/env python
"""Draw a trained detector's detections on images and write PNGs.

    python tools/visualize_detections.py --config-file configs/X.yaml --images a.jpg dir/ \
        --output-dir vis/ [--score-threshold 0.3] [MODEL.WEIGHT model_final.pth] KEY VALUE ...

Images: files or folders (every .jpg/.jpeg/.png/.bmp inside). Weights: MODEL.WEIGHT, else the last
checkpoint of OUTPUT_DIR. Class names come from DATASETS.TEST[0] (else DATASETS.TRAIN[0]) when it
can be opened, else labels are printed as numbers. ``visualize_images`` is the function to call
from Python.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import torch  # noqa: E402

from maskrcnn_benchmark.utils.visualize import draw_boxlist, write_png  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
logger = logging.getLogger("maskrcnn_benchmark.visualize")


def list_images(paths: Sequence[str]) -> List[str]:
    """Files in ``paths``, folders expanded to their images (sorted)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"image or folder not found: {p}")
    return out


@torch.no_grad()
def visualize_images(cfg, model: torch.nn.Module, image_paths: Sequence[str], output_dir: str,
                     class_names: Optional[Sequence[str]] = None, score_threshold: float = 0.3) -> List[str]:
    """Run ``model`` (eval mode) on each image (test transforms of ``cfg``), draw the detections with
    score >= ``score_threshold`` on the original image and write ``output_dir/<name>.png``.

    With ``TEST.BBOX_AUG.ENABLED`` the detections are those of the test-time augmentation.

    Returns the written paths.
    """
    from maskrcnn_benchmark.data.transforms import build_transforms
    from maskrcnn_benchmark.engine.bbox_aug import build_bbox_augmentor, tta_input_transforms
    from maskrcnn_benchmark.structures.image_list import to_image_list

    bbox_aug = build_bbox_augmentor(cfg)
    transforms = tta_input_transforms() if bbox_aug is not None else build_transforms(cfg, is_train=False)
    device = torch.device(cfg.MODEL.DEVICE)
    model.eval()
    written = []
    for path in image_paths:
        original = cv2.imread(path, cv2.IMREAD_COLOR)
        if original is None:
            raise ValueError(f"OpenCV cannot read image {path}")
        image, _ = transforms(original, None)
        images = to_image_list([image], cfg.DATALOADER.SIZE_DIVISIBILITY).to(device)
        detections = (bbox_aug(model, images) if bbox_aug is not None else model(images))[0].to("cpu")
        drawn = draw_boxlist(original, detections, class_names, score_threshold)
        out = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        write_png(out, drawn)
        written.append(out)
        logger.info("%s: %d detections >= %.2f -> %s", path,
                    int((detections.get_field("scores") >= score_threshold).sum()), score_threshold, out)
    return written


def dataset_class_names(cfg) -> Optional[List[str]]:
    """Class names (index 0 = background) of the first test (else train) dataset, or None."""
    from maskrcnn_benchmark.data import build_dataset
    from maskrcnn_benchmark.data.build import _catalog

    for names, is_train in ((cfg.DATASETS.TEST, False), (cfg.DATASETS.TRAIN, True)):
        if names:
            try:
                return list(build_dataset([names[0]], None, _catalog(cfg), is_train)[0].class_names)
            except (OSError, KeyError, ValueError) as e:
                logger.warning("cannot read class names from %s: %s", names[0], e)
    return None


def main(argv: Optional[List[str]] = None) -> List[str]:
    from maskrcnn_benchmark.engine.inference import build_test_model
    from maskrcnn_benchmark.utils.logger import setup_logger
    from maskrcnn_benchmark.config import add_config_args, cfg_from_args

    parser = argparse.ArgumentParser(description="Draw detections on images")
    add_config_args(parser)
    parser.add_argument("--images", nargs="+", required=True, help="image files or folders")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--score-threshold", type=float, default=0.3)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)
    cfg = cfg_from_args(parser, args)
    setup_logger("maskrcnn_benchmark", None, 0)
    cfg, model = build_test_model(cfg, logger)
    return visualize_images(cfg, model, list_images(args.images), args.output_dir, dataset_class_names(cfg),
                            args.score_threshold)


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    run_tool(main)
