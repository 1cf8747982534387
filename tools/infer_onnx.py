#!/usr/bin/env python
"""Run an exported detector (tools/export_onnx.py) in onnxruntime: COCO / VOC accuracy, or speed.

    # accuracy over DATASETS.TEST, written as tools/test_net.py writes it
    # (OUTPUT_DIR/inference/<dataset>/{bbox.json,metrics.json}):
    python tools/infer_onnx.py --model model.onnx --config-file CFG [--batch 8] OUTPUT_DIR out/
    # speed: a fixed batch after a warm-up, img/s (optionally PyTorch on the same batch):
    python tools/infer_onnx.py --model model.onnx --config-file CFG --benchmark --batch 8 \\
        [--torch fp32,bf16] [MODEL.WEIGHT model_final.pth]

Needs the deploy extra (pip install -e ".[deploy]"); --provider cuda / tensorrt need
onnxruntime-gpu. Use the config the model was exported with: it gives the test transforms
(the graph's pre-processing, see tools/export_onnx.py --help), the datasets, and for a
--postprocess none graph the post-processing (TopK per level, NMS, TEST.DETECTIONS_PER_IMG).
Images larger than the graph's H x W are scaled down to fit (a warning): export with
--height / --width covering INPUT.MAX_SIZE_TEST in both orientations for exact parity.
The benchmark batch is seeded random pixels (N(0, 50^2), the graph's H x W); times are the
median per batch, end to end (padding, the run, the detections as BoxLists).
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
    parser.add_argument("--model", required=True,
                        help="the .onnx file (or, --runtime aoti, the .pt2 AOTInductor package of "
                             "tools/export_onnx.py --format aoti)")
    parser.add_argument("--runtime", choices=("onnxruntime", "aoti"), default="",
                        help="onnxruntime (default; a .onnx graph) or aoti (a .pt2 package, torch "
                             "only; default for a .pt2 file)")
    parser.add_argument("--batch", type=int, default=0,
                        help="images per batch (accuracy: TEST.IMS_PER_BATCH by default; "
                             "benchmark: the graph's batch, else 1)")
    parser.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--benchmark", action="store_true", help="time a fixed batch, print img/s")
    parser.add_argument("--warmup", type=int, default=3, help="benchmark warm-up runs")
    parser.add_argument("--iters", type=int, default=10, help="benchmark timed runs")
    parser.add_argument("--torch", default="",
                        help="benchmark: also time the PyTorch model (MODEL.WEIGHT) on the same "
                             "batch in these comma-separated precisions (fp32, bf16, fp16: TEST.AMP)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser


def runtime_of(args) -> str:
    """``--runtime``, or by default ``aoti`` for a ``.pt2`` file and onnxruntime otherwise."""
    return args.runtime or ("aoti" if args.model.endswith(".pt2") else "onnxruntime")


def run_benchmark(cfg, args) -> List[dict]:
    """The benchmark rows (onnxruntime, then PyTorch per ``--torch`` precision)."""
    import torch

    from maskrcnn_benchmark.engine.inference import build_test_model
    from maskrcnn_benchmark.export.runtime import benchmark, build_exported_detector, fixed_batch

    detector = build_exported_detector(cfg, args.model, runtime_of(args), args.provider,
                                       args.threads)
    batch = args.batch or detector.batch or 1
    if detector.batch and batch != detector.batch:
        raise ValueError(f"--batch {batch}: {args.model} has a fixed batch of {detector.batch} "
                         "(export with --dynamic-batch for other sizes)")
    from maskrcnn_benchmark.export.onnx_export import default_input_hw

    # a dynamic-shape graph: the config's largest landscape test size
    hw = (detector.height, detector.width) if detector.height else default_input_hw(cfg)
    images = fixed_batch(batch, *hw)
    backend = f"onnxruntime ({args.provider})" if runtime_of(args) == "onnxruntime" else "aotinductor (cpu)"
    rows = [dict(backend=backend, model=os.path.basename(args.model),
                 **benchmark(lambda: detector(images), batch, args.warmup, args.iters))]
    precisions = [p for p in args.torch.split(",") if p]
    bad = [p for p in precisions if p not in ("fp32", "bf16", "fp16")]
    if bad:
        raise ValueError(f"--torch: unknown precision(s) {bad}; use fp32, bf16, fp16")
    for precision in precisions:
        c = cfg.clone()
        c.defrost()
        c.TEST.AMP = "" if precision == "fp32" else precision
        c.freeze()
        _, model = build_test_model(c)
        device = torch.device(c.MODEL.DEVICE)
        on_device = images.to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else None
        with torch.inference_mode():
            rows.append(dict(backend=f"pytorch {precision} ({device.type})", model="",
                             **benchmark(lambda: model(on_device), batch, args.warmup, args.iters,
                                         sync)))
    return rows


def main(argv: Optional[List[str]] = None):
    import maskrcnn_benchmark.modeling.dense_heads  # noqa: F401  (registers MODEL.GFL etc.: before the config)
    from maskrcnn_benchmark.export.runtime import evaluate_onnx
    from maskrcnn_benchmark.utils.logger import setup_logger
    from maskrcnn_benchmark.utils.miscellaneous import mkdir

    parser = build_parser()
    args = parser.parse_args(argv)
    opts = list(args.opts)
    if args.batch and not args.benchmark:
        opts += ["TEST.IMS_PER_BATCH", args.batch]
    cfg = cfg_from_args(parser, args, opts)
    if not os.path.isfile(args.model):
        parser.error(f"--model {args.model}: file not found")
    if cfg.OUTPUT_DIR and not args.benchmark:
        mkdir(cfg.OUTPUT_DIR)
    setup_logger("maskrcnn_benchmark", None if args.benchmark else cfg.OUTPUT_DIR, 0,
                 filename="test_log.txt")
    try:
        if not args.benchmark:
            return evaluate_onnx(cfg, args.model, args.provider, args.threads, runtime_of(args))
        rows = run_benchmark(cfg, args)
    except (ImportError, ValueError, FileNotFoundError, RuntimeError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"{'backend':<28} {'batch':>5} {'ms/batch':>10} {'img/s':>8}")
    for r in rows:
        print(f"{r['backend']:<28} {r['batch']:>5} {r['ms_per_batch']:>10.1f} {r['img_per_s']:>8.2f}")
    return rows


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    run_tool(main)
