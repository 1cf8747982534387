#!/usr/bin/env python
"""Train a detector.

    python tools/train_net.py --config-file configs/X.yaml [--skip-test] KEY VALUE ...
    torchrun --nproc_per_node=N tools/train_net.py --config-file configs/X.yaml ...
    python -m torch.distributed.launch --nproc_per_node=N tools/train_net.py --config-file ...

A rerun with the same OUTPUT_DIR resumes from its last checkpoint.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maskrcnn_benchmark.config import add_config_args, cfg_from_args  # noqa: E402
from maskrcnn_benchmark.engine.trainer import train  # noqa: E402
from maskrcnn_benchmark.utils.collect_env import collect_env_info  # noqa: E402
from maskrcnn_benchmark.utils.comm import get_rank, get_world_size  # noqa: E402
from maskrcnn_benchmark.utils.launch import add_distributed_args, init_distributed  # noqa: E402
from maskrcnn_benchmark.utils.logger import setup_logger  # noqa: E402
from maskrcnn_benchmark.utils.run_lock import training_lock  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train a dense object detector")
    add_config_args(parser)
    parser.add_argument("--skip-test", dest="skip_test", action="store_true",
                        help="do not evaluate the final model")
    add_distributed_args(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. SOLVER.MAX_ITER 100")
    return parser


def main(argv: Optional[List[str]] = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = cfg_from_args(parser, args)
    distributed, local_rank = init_distributed(args.local_rank, cfg.MODEL.DEVICE, timeout_s=cfg.DIST_TIMEOUT_S)
    with training_lock(cfg.OUTPUT_DIR, distributed):  # before log.txt: a refused run writes nothing there
        logger = setup_logger("maskrcnn_benchmark", cfg.OUTPUT_DIR, get_rank())
        logger.info("Using %d process(es)", get_world_size())
        logger.info("Arguments: %s", args)
        logger.info("Environment:\n%s", collect_env_info())
        if args.config_file:
            with open(args.config_file, encoding="utf-8") as f:
                logger.info("Loaded config file %s:\n%s", args.config_file, f.read())
        logger.info("Running with config:\n%s", cfg)
        return train(cfg, local_rank, distributed, skip_test=args.skip_test, output_dir_locked=True)


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    run_tool(main)
