#!/usr/bin/env python
"""Export a dense detector (ATSS, DYNAMIC_ATSS, AUTOASSIGN, FREEANCHOR, RETINANET, FCOS) to ONNX.

    python tools/export_onnx.py --config-file configs/free_anchor/free_anchor_R_50_FPN_1x.yaml \\
        --output free_anchor.onnx --batch 32 --height 800 --width 1344 --simplify --fp16 \\
        --postprocess nms MODEL.WEIGHT model_final.pth

Needs the deploy extra: pip install -e ".[deploy]" (onnx, onnxruntime, onnxconverter-common,
onnxslim). The graph is backbone + FPN + head (+ post-processing with --postprocess nms); it is
checked with onnx.checker, run once in onnxruntime and compared with PyTorch (TEST.AMP sets the
PyTorch side's autocast). Exporter: torch.onnx.export(dynamo=False), see
maskrcnn_benchmark/export/onnx_export.py.

Graph input ``images`` [B, 3, H, W] float32, the pre-processing of tools/test_net.py:
  1. resize the shorter side to INPUT.MIN_SIZE_TEST, the longer at most INPUT.MAX_SIZE_TEST
     (bilinear, aspect ratio kept);
  2. INPUT.TO_BGR255 True: BGR channel order, 0..255; False: RGB scaled to 0..1;
  3. subtract INPUT.PIXEL_MEAN and divide by INPUT.PIXEL_STD per channel (in that order/scale);
  4. CHW float32, zero-padded at the bottom / right to H x W (multiples of
     DATALOADER.SIZE_DIVISIBILITY; default H, W = MIN_SIZE_TEST, MAX_SIZE_TEST rounded up).
Outputs, --postprocess none: scores [B, N, C] (the head's final score), boxes [B, N, 4] (x1, y1,
x2, y2 in input pixels, not clipped), candidate_mask [B, N, C] (pairs above INFERENCE_TH).
With TEST.BATCH_INVARIANT (default) a second input image_sizes [B, 2] float32 (h, w of each
resized image before padding): each image then sees only its canvas (its size rounded up to
DATALOADER.SIZE_DIVISIBILITY), so its detections are test_net's whatever H x W and the batch.
--postprocess nms: image_sizes also clips the boxes; outputs boxes [B, K, 4], scores [B, K],
labels [B, K] int64 (1..C, 0 = padding row), K = TEST.DETECTIONS_PER_IMG. Boxes are in the
resized image's pixels: divide by the resize factor for the original image.
--dynamic-shape: H and W symbolic (multiples of DATALOADER.SIZE_DIVISIBILITY), priors computed
in the graph. --format aoti: torch.export (dynamic batch, H, W >= the first multiple of the
divisibility above the largest stride) compiled by AOTInductor into a .pt2 package (torch only,
a C++ compiler; minutes), the --postprocess none outputs; run it with tools/infer_onnx.py
--runtime aoti.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maskrcnn_benchmark.config import add_config_args, cfg_from_args  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--batch", type=int, default=1, help="fixed batch size (default 1)")
    group.add_argument("--dynamic-batch", action="store_true", help="symbolic batch axis")
    parser.add_argument("--format", choices=("onnx", "aoti"), default="onnx",
                        help="onnx (default) or aoti: a .pt2 AOTInductor package of torch.export "
                             "(dynamic batch / H / W, --postprocess none outputs)")
    parser.add_argument("--dynamic-shape", action="store_true",
                        help="symbolic height and width (any multiples of "
                             "DATALOADER.SIZE_DIVISIBILITY; --height / --width: the traced example); "
                             "priors computed in the graph")
    parser.add_argument("--height", type=int, default=0, help="input height (0: from the config)")
    parser.add_argument("--width", type=int, default=0, help="input width (0: from the config)")
    parser.add_argument("--opset", type=int, default=0,
                        help="ONNX opset, 13..20 (default: 17, or 19 for a model with deformable "
                             "convolutions, exported as the standard DeformConv)")
    parser.add_argument("--simplify", action="store_true", help="simplify with onnxslim")
    parser.add_argument("--fp16", action="store_true",
                        help="float16 network (onnxconverter-common), float32 inputs, outputs and "
                             "post-processing")
    parser.add_argument("--postprocess", choices=("none", "nms"), default="none",
                        help="none: all candidates' scores and boxes; nms: fixed-size detections")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHT model_final.pth")
    return parser


def main(argv: Optional[List[str]] = None):
    import maskrcnn_benchmark.modeling.dense_heads  # noqa: F401  (registers MODEL.GFL etc.: before the config)
    from maskrcnn_benchmark.export.onnx_export import export_detector, preprocessing_description
    from maskrcnn_benchmark.utils.logger import setup_logger

    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = cfg_from_args(parser, args)
    setup_logger("maskrcnn_benchmark", None, 0)
    if args.format == "aoti":
        return _export_aoti(parser, cfg, args.output)
    try:
        result = export_detector(cfg, args.output, batch=1 if args.dynamic_batch else args.batch,
                                 dynamic_batch=args.dynamic_batch, height=args.height,
                                 width=args.width, opset=args.opset, simplify=args.simplify,
                                 fp16=args.fp16, postprocess=args.postprocess,
                                 dynamic_shape=args.dynamic_shape)
    except (ImportError, ValueError, FileNotFoundError, RuntimeError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"wrote {result.path}")
    print(f"pre-processing: {preprocessing_description(cfg)}")
    for name, diff in result.max_abs_diff.items():
        print(f"max |onnxruntime - pytorch| {name}: {diff:.3g}")
    return result


def _export_aoti(parser: argparse.ArgumentParser, cfg, output: str) -> str:
    """--format aoti: the AOTInductor package of the config's inference model."""
    from maskrcnn_benchmark.engine.inference import build_test_model
    from maskrcnn_benchmark.export.aoti import export_aoti

    try:
        cfg, model = build_test_model(cfg, purpose="export")
        path = export_aoti(model, output)
    except (ImportError, ValueError, FileNotFoundError, RuntimeError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    run_tool(main)
