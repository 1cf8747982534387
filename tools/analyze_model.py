#!/usr/bin/env python
"""Print a detector's parameters and FLOPs per module at a given input size.

    python tools/analyze_model.py --config-file configs/X.yaml [--height 800 --width 1333] [--depth 3] KEY VALUE ...

FLOPs are counted by ``torch.utils.flop_counter`` on one forward pass of the model in eval mode
(inference, post-processing included) on a random image; one FLOP is one multiply or add (a
multiply-add is 2). The project's compiled ops (deformable convolution, box IoU, NMS, focal loss)
are counted by the formulas of ``maskrcnn_benchmark/utils/flop_count.py``, not as zero; NMS is
counted as its worst case over every candidate slot of the batch (the post-processor's one NMS
call sees a fixed number of slots, whatever the scores). Default size: INPUT.MIN_SIZE_TEST x
INPUT.MAX_SIZE_TEST. Weights: random unless --load-weights (then MODEL.WEIGHT).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

logger = logging.getLogger("maskrcnn_benchmark.analyze")


def build_model(cfg, load_weights: bool = False):
    """The model of ``cfg`` in eval mode (NUM_CLASSES 0: from the training data, else 81 with a note);
    MODEL.WEIGHT loaded when ``load_weights``."""
    from maskrcnn_benchmark.modeling.dense_heads import fill_num_classes_from_data
    from maskrcnn_benchmark.modeling.dense_heads import get_num_classes, num_classes_key
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer

    if get_num_classes(cfg) == 0:
        try:
            cfg = fill_num_classes_from_data(cfg)
        except (OSError, KeyError, ValueError) as e:
            logger.warning("%s is 0 and the training data cannot be read (%s); counting with 81 (COCO)",
                           num_classes_key(cfg), e)
            cfg = cfg.clone()
            cfg.defrost()
            cfg.merge_from_list([num_classes_key(cfg), 81])
            cfg.freeze()
    model = build_detection_model(cfg)
    if load_weights and cfg.MODEL.WEIGHT:
        Checkpointer(model, save_to_disk=False).load_weights(cfg.MODEL.WEIGHT, tuple(cfg.MODEL.RESNETS.STAGE_WITH_DCN))
    return model.eval(), cfg


def analyze(cfg, height: int, width: int, depth: int = 3, load_weights: bool = False) -> Dict[str, object]:
    """Count parameters and FLOPs; returns ``{"total_flops", "flops", "params", "table", "by_op"}``."""
    from maskrcnn_benchmark.utils.flop_count import count_flops, count_parameters, module_table

    model, cfg = build_model(cfg, load_weights)
    device = torch.device(cfg.MODEL.DEVICE)
    image = torch.randn(1, 3, height, width, device=device)
    total, flops = count_flops(model, image, depth=depth)
    params = count_parameters(model, depth=depth)
    by_op = sorted(flops.get("Global", {}).items(), key=lambda kv: -kv[1])
    extra = ["", f"input 1 x 3 x {height} x {width} (padded to a multiple of {cfg.DATALOADER.SIZE_DIVISIBILITY} "
                 f"inside the model): {total / 1e9:.3f} GFLOPs, "
                 f"{sum(p.numel() for p in model.parameters()) / 1e6:.3f} M parameters", "FLOPs by op:"]
    extra += [f"  {str(op):48s} {n / 1e9:.4f} G" for op, n in by_op]
    return {"total_flops": total, "flops": flops, "params": params, "table": module_table(params, flops, extra, depth),
            "by_op": by_op}


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    import maskrcnn_benchmark.modeling.dense_heads  # noqa: F401  (registers MODEL.GFL etc.: before the config)
    from maskrcnn_benchmark.utils.logger import setup_logger
    from maskrcnn_benchmark.config import cfg_from_args

    parser = argparse.ArgumentParser(description="Parameters and FLOPs per module of a detector")
    parser.add_argument("--config-file", default="", metavar="FILE")
    parser.add_argument("--height", type=int, default=0, help="input height (default INPUT.MIN_SIZE_TEST)")
    parser.add_argument("--width", type=int, default=0, help="input width (default INPUT.MAX_SIZE_TEST)")
    parser.add_argument("--depth", type=int, default=3, help="module levels to list (default 3)")
    parser.add_argument("--load-weights", action="store_true", help="load MODEL.WEIGHT (default: random weights)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    cfg = cfg_from_args(parser, args)
    height = args.height or int(cfg.INPUT.MIN_SIZE_TEST)
    width = args.width or int(cfg.INPUT.MAX_SIZE_TEST)
    if height <= 0 or width <= 0 or args.depth < 0:
        parser.error(f"--height, --width must be positive and --depth >= 0, got {height}, {width}, {args.depth}")
    setup_logger("maskrcnn_benchmark", None, 0)
    result = analyze(cfg, height, width, args.depth, args.load_weights)
    print(result["table"])
    return result


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    run_tool(main)
