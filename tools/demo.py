#!/usr/bin/env python
"""The main job on a fresh machine: synthetic data -> train Dynamic ATSS on the CPU -> COCO evaluation
-> pictures of detections.

    python tools/demo.py [--config-file configs/dynamic_atss/dynamic_atss_R_18_FPN_synthetic.yaml]
                         [--num-images 6] [KEY VALUE ...]

1. The synthetic COCO-format dataset is generated on first use under datasets/synthetic_coco/
   (or $MASKRCNN_BENCHMARK_DATA_DIR/synthetic_coco/).
2. tools/train_net.py's training runs with the config (OUTPUT_DIR demo_output/... by default); a rerun
   resumes from the last checkpoint, and a finished run is only re-evaluated.
3. COCO evaluation on the validation split: OUTPUT_DIR/inference/synthetic_coco_val/{bbox.json,metrics.json}.
4. Detections drawn on the first --num-images validation images: OUTPUT_DIR/vis/*.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_CONFIG = os.path.join(ROOT, "configs/dynamic_atss/dynamic_atss_R_18_FPN_synthetic.yaml")


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description="Synthetic-data demo: train, evaluate, draw detections")
    from maskrcnn_benchmark.config import add_config_args

    add_config_args(parser, default=DEFAULT_CONFIG)
    parser.add_argument("--num-images", type=int, default=6, help="validation images to draw")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)

    from maskrcnn_benchmark.data import build_dataset
    from maskrcnn_benchmark.data.build import _catalog
    from maskrcnn_benchmark.engine.trainer import train
    from maskrcnn_benchmark.utils.logger import setup_logger
    from maskrcnn_benchmark.config import setup_cfg
    from maskrcnn_benchmark.utils.run_lock import training_lock
    from tools.visualize_detections import visualize_images

    cfg = setup_cfg(args.config_file, args.opts, allow_python=args.allow_python_config)
    with training_lock(cfg.OUTPUT_DIR):  # before log.txt: a refused run writes nothing there
        logger = setup_logger("maskrcnn_benchmark", cfg.OUTPUT_DIR, 0)
        start = time.time()
        model = train(cfg, skip_test=False, output_dir_locked=True)
        elapsed = time.time() - start

    val_name = cfg.DATASETS.TEST[0]
    metrics_path = os.path.join(cfg.OUTPUT_DIR, "inference", val_name, "metrics.json")
    with open(metrics_path, encoding="utf-8") as f:
        metrics = json.load(f)
    metrics = metrics.get("bbox", metrics)

    dataset = build_dataset([val_name], None, _catalog(cfg), False)[0]
    paths = [os.path.join(dataset.root, dataset.get_img_info(i)["file_name"])
             for i in range(min(args.num_images, len(dataset)))]
    vis_dir = os.path.join(cfg.OUTPUT_DIR, "vis")
    written = visualize_images(cfg, model, paths, vis_dir, dataset.class_names, args.score_threshold)

    summary = {"config": os.path.relpath(args.config_file, ROOT), "train+eval seconds": round(elapsed, 1),
               **{k: round(float(v), 4) for k, v in metrics.items()}, "pictures": vis_dir}
    logger.info("Demo summary: %s", json.dumps(summary))
    print("\n=== Dynamic ATSS synthetic demo ===")
    print(f"training + evaluation: {elapsed / 60:.1f} min")
    print("  ".join(f"{k} {float(metrics[k]):.3f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")
                    if k in metrics))
    print(f"detections drawn on {len(written)} validation images in {vis_dir}/")
    return summary


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    run_tool(main)
