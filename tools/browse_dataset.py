#!/usr/bin/env python
"""Draw a dataset's ground-truth boxes, as the model sees them, to PNG files (to check data and transforms).

    python tools/browse_dataset.py --config-file configs/X.yaml [--train] [--output-dir browse] [--num 20] KEY VALUE ...

Without ``--train``: the images of DATASETS.TEST after the test transforms (resize, normalise, undone
for drawing). With ``--train``: the images of DATASETS.TRAIN after the training transforms (random
scale and flip, drawn with SEED), images without boxes dropped unless DATALOADER.KEEP_EMPTY_IMAGES.
Writes ``OUTPUT_DIR/<dataset>/<index>_<image file>.png``.
"""
from __future__ import annotations

import argparse
import bisect
import logging
import os
import sys
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

logger = logging.getLogger("maskrcnn_benchmark.browse")


def _leaf(dataset, index: int) -> Tuple[object, int]:
    """(leaf dataset, its index) of ``index`` in a possibly concatenated dataset."""
    from torch.utils.data import ConcatDataset

    while isinstance(dataset, ConcatDataset):
        k = bisect.bisect_right(dataset.cumulative_sizes, index)
        index -= dataset.cumulative_sizes[k - 1] if k > 0 else 0
        dataset = dataset.datasets[k]
    return dataset, index


def browse(cfg, is_train: bool, output_dir: str, num: int) -> List[str]:
    """Write up to ``num`` images per dataset with their ground truth drawn; returns the written paths."""
    from maskrcnn_benchmark.data.build import _catalog, build_dataset
    from maskrcnn_benchmark.data.transforms import build_transforms
    from maskrcnn_benchmark.engine.inference import dataset_folder_name
    from maskrcnn_benchmark.utils.visualize import denormalize_image, draw_boxlist, write_png

    names = list(cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST)
    datasets = build_dataset(names, build_transforms(cfg, is_train), _catalog(cfg), is_train,
                             keep_empty_images=bool(cfg.DATALOADER.KEEP_EMPTY_IMAGES))
    if cfg.SEED >= 0:
        torch.manual_seed(cfg.SEED)
    folders = ["train"] if is_train else [dataset_folder_name(n) for n in names]
    written = []
    for dataset, folder in zip(datasets, folders):
        for i in range(min(num, len(dataset))):
            tensor, target, _ = dataset[i]
            image = denormalize_image(tensor, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, cfg.INPUT.TO_BGR255)
            leaf, j = _leaf(dataset, i)
            drawn = draw_boxlist(image, target, leaf.class_names)
            stem = os.path.splitext(os.path.basename(leaf.get_img_info(j)["file_name"]))[0]
            path = os.path.join(output_dir, folder, f"{i:05d}_{stem}.png")
            write_png(path, drawn)
            written.append(path)
        logger.info("%s: drew %d of %d images to %s", folder, min(num, len(dataset)), len(dataset),
                    os.path.join(output_dir, folder))
    return written


def main(argv: Optional[List[str]] = None) -> List[str]:
    import maskrcnn_benchmark.modeling.dense_heads  # noqa: F401  (registers MODEL.GFL etc.: before the config)
    from maskrcnn_benchmark.utils.logger import setup_logger
    from maskrcnn_benchmark.config import cfg_from_args

    parser = argparse.ArgumentParser(description="Draw ground-truth boxes after the data transforms")
    parser.add_argument("--config-file", default="", metavar="FILE")
    parser.add_argument("--train", action="store_true", help="DATASETS.TRAIN with the training transforms "
                        "(default: DATASETS.TEST with the test transforms)")
    parser.add_argument("--output-dir", default="browse_dataset", help="where to write the PNGs")
    parser.add_argument("--num", type=int, default=20, help="images per dataset (default 20)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    cfg = cfg_from_args(parser, args)
    if args.num <= 0:
        parser.error(f"--num must be positive, got {args.num}")
    setup_logger("maskrcnn_benchmark", None, 0)
    return browse(cfg, args.train, args.output_dir, args.num)


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    run_tool(main)
