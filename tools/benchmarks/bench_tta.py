#!/usr/bin/env python
"""AP and inference time of test-time augmentation variants on the synthetic demo model.

    python tools/demo.py                                  # once: trains the demo model
    python tools/benchmarks/bench_tta.py [--weight demo_output/dynamic_atss_R_18_FPN_synthetic/model_final.pth]
        [--output-dir bench_tta_output] [--variants none flip ...] [KEY VALUE ...]

Workload: the demo config (configs/dynamic_atss/dynamic_atss_R_18_FPN_synthetic.yaml, test size 224)
on its validation set (synthetic_coco_val, 100 images, TEST.IMS_PER_BATCH 8), one process on
MODEL.DEVICE. Variants (TEST.BBOX_AUG.*):

- ``none``: no TTA;
- ``flip``: + the mirrored image (H_FLIP), merged by per-class NMS;
- ``flip+3scales``: + shorter sides 160, 288, 352 (MAX_SIZE 512), each mirrored too (SCALE_H_FLIP), NMS;
- ``flip+3scales+vote``: the same views merged by box voting (VOTE, MERGE_TYPE vote, VOTE_TH 0.66);
- ``flip+3scales+soft-vote``: soft voting.

Inference time is the detection loop over the dataset (data loading included, evaluation excluded),
as ``metrics.json``'s ``inference_time_s``. Prints a markdown table. KEY VALUE pairs override the
config (e.g. ``DATASETS.TEST '("<ann.json>:<images>",)'`` for a smaller set).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

CONFIG = os.path.join(ROOT, "configs/dynamic_atss/dynamic_atss_R_18_FPN_synthetic.yaml")
WEIGHT = os.path.join(ROOT, "demo_output/dynamic_atss_R_18_FPN_synthetic/model_final.pth")
SCALES = ["TEST.BBOX_AUG.SCALES", "(160, 288, 352)", "TEST.BBOX_AUG.MAX_SIZE", "512",
          "TEST.BBOX_AUG.SCALE_H_FLIP", "True"]
VARIANTS: Dict[str, List[str]] = {
    "none": [],
    "flip": ["TEST.BBOX_AUG.ENABLED", "True", "TEST.BBOX_AUG.H_FLIP", "True"],
    "flip+3scales": ["TEST.BBOX_AUG.ENABLED", "True", "TEST.BBOX_AUG.H_FLIP", "True", *SCALES],
    "flip+3scales+vote": ["TEST.BBOX_AUG.ENABLED", "True", "TEST.BBOX_AUG.H_FLIP", "True", *SCALES,
                          "TEST.BBOX_AUG.VOTE", "True", "TEST.BBOX_AUG.MERGE_TYPE", "vote",
                          "TEST.BBOX_AUG.VOTE_TH", "0.66"],
    "flip+3scales+soft-vote": ["TEST.BBOX_AUG.ENABLED", "True", "TEST.BBOX_AUG.H_FLIP", "True", *SCALES,
                               "TEST.BBOX_AUG.VOTE", "True", "TEST.BBOX_AUG.MERGE_TYPE", "soft-vote",
                               "TEST.BBOX_AUG.VOTE_TH", "0.66"],
}


def main(argv=None) -> List[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", default=CONFIG)
    p.add_argument("--weight", default=WEIGHT)
    p.add_argument("--output-dir", default=os.path.join(ROOT, "bench_tta_output"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)
    if not os.path.isfile(args.weight):
        p.error(f"weights {args.weight} not found: run `python3 tools/demo.py` first (or pass --weight)")

    import torch

    from maskrcnn_benchmark.engine.inference import dataset_folder_name, run_test
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer
    from maskrcnn_benchmark.utils.logger import setup_logger
    from maskrcnn_benchmark.config import setup_cfg

    setup_logger("maskrcnn_benchmark", None, 0)
    rows = []
    model = None
    for name in args.variants:
        out = os.path.join(args.output_dir, name.replace("+", "_"))
        cfg = setup_cfg(args.config_file, ["MODEL.WEIGHT", args.weight, "OUTPUT_DIR", out, *args.opts,
                                           *VARIANTS[name]])
        if model is None:
            torch.manual_seed(0)
            model = build_detection_model(cfg)
            Checkpointer(model, save_dir=out, save_to_disk=False).load_weights(cfg.MODEL.WEIGHT)
        results = run_test(cfg, model)
        test_name = cfg.DATASETS.TEST[0]
        with open(os.path.join(out, "inference", dataset_folder_name(test_name), "metrics.json")) as f:
            metrics = json.load(f)
        rows.append({"variant": name, **{k: results[test_name][k] for k in ("AP", "AP50", "AP75")},
                     "seconds": metrics["inference_time_s"], "images": metrics["num_images"]})
    print("\n| variant | AP | AP50 | AP75 | inference s | s / image |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['AP']:.4f} | {r['AP50']:.4f} | {r['AP75']:.4f} | {r['seconds']:.1f} | "
              f"{r['seconds'] / max(r['images'], 1):.3f} |")
    return rows


if __name__ == "__main__":
    main()
