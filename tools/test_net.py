#!/usr/bin/env python
"""Evaluate a detector on every DATASETS.TEST entry (COCO AP, or VOC AP50 for Pascal VOC datasets);
one process or many (torchrun).

    python tools/test_net.py --config-file configs/X.yaml [MODEL.WEIGHT path.pth] KEY VALUE ...
    python tools/test_net.py ... TEST.BBOX_AUG.ENABLED True TEST.BBOX_AUG.H_FLIP True    # test-time augmentation

Weights: MODEL.WEIGHT, else the last checkpoint of OUTPUT_DIR. Results go to
OUTPUT_DIR/inference/<dataset>/{bbox.json,metrics.json,pr_curves.png} (metrics.json holds the summary
and the per-class metrics; pr_curves.png only with TEST.PR_CURVES True and matplotlib).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from maskrcnn_benchmark.config import add_config_args, cfg_from_args  # noqa: E402
from maskrcnn_benchmark.engine.bbox_aug import build_bbox_augmentor  # noqa: E402
from maskrcnn_benchmark.engine.inference import run_test  # noqa: E402
from maskrcnn_benchmark.utils.collect_env import collect_env_info  # noqa: E402
from maskrcnn_benchmark.utils.comm import get_rank, get_world_size  # noqa: E402
from maskrcnn_benchmark.utils.launch import add_distributed_args, init_distributed  # noqa: E402
from maskrcnn_benchmark.utils.logger import setup_logger  # noqa: E402
from maskrcnn_benchmark.utils.miscellaneous import mkdir  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a dense object detector")
    add_config_args(parser)
    add_distributed_args(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHT model_final.pth")
    return parser


def test(cfg, distributed: bool = False) -> Dict[str, Dict[str, float]]:
    """Build the model of ``cfg``, load MODEL.WEIGHT (else OUTPUT_DIR's last checkpoint) and evaluate."""
    import logging

    from maskrcnn_benchmark.engine.inference import build_test_model

    cfg, model = build_test_model(cfg, logging.getLogger("maskrcnn_benchmark.test"))
    return run_test(cfg, model, distributed)


def main(argv: Optional[List[str]] = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = cfg_from_args(parser, args, validate=build_bbox_augmentor)  # bad TEST.BBOX_AUG keys: an error before any work
    distributed, _ = init_distributed(args.local_rank, cfg.MODEL.DEVICE, timeout_s=cfg.DIST_TIMEOUT_S)
    if cfg.OUTPUT_DIR:
        mkdir(cfg.OUTPUT_DIR)
    logger = setup_logger("maskrcnn_benchmark", cfg.OUTPUT_DIR, get_rank(), filename="test_log.txt")
    logger.info("Using %d process(es)", get_world_size())
    logger.info("Environment:\n%s", collect_env_info())
    logger.info("Running with config:\n%s", cfg)
    return test(cfg, distributed)


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    run_tool(main)
