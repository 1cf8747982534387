#!/usr/bin/env python
"""Inference speed on the CPU: PyTorch eager vs onnxruntime vs AOTInductor, and the cost of the
batch-invariant masks (BENCHMARKS.md section 8).

    python tools/benchmarks/bench_deploy.py [--config-file CFG] [--weight W] [--height 224 --width 320]
        [--batch 8] [--warmup 3] [--iters 10] [--skip-onnx] [--skip-aoti] [--output-dir DIR] [KEY VALUE ...]

Workload (fixed): the config's inference model (default: the demo config
configs/dynamic_atss/dynamic_atss_R_18_FPN_synthetic.yaml; the weights of --weight, else random:
speed only), as test_net prepares it (FrozenBN folded, channels-last), on seeded N(0, 50^2) images,
the median time of ``--iters`` calls after ``--warmup``, end to end (backbone, head,
post-processing). The rows of one runtime are timed round by round (one call of each per round),
so a change in the machine's speed reaches them alike; the runtimes run one after the other, each
after its own warm-up (onnxruntime's threads spin on after a call and slow another runtime's next
call):

- ``eager, uniform``: a batch of ``--batch`` images of H x W (every image fills the tensor: no
  mask is built, TEST.BATCH_INVARIANT True and False run the same code), and the same with
  TEST.BATCH_INVARIANT False (the two rows should agree within noise: the masks cost nothing);
- ``eager, mixed``: the same batch where every second image is H/2 x W/2 (canvases differ):
  masked (TEST.BATCH_INVARIANT True) and unmasked (False): the cost of the masks;
- ``onnxruntime``: the dynamic-shape, batch-invariant ``--postprocess nms`` graph (fp32) on the
  uniform and mixed batches;
- ``aotinductor``: the ``.pt2`` package of tools/export_onnx.py --format aoti (torch.export +
  AOTInductor; compiling it takes minutes) + the PyTorch post-processor, uniform and mixed.

Prints a markdown table (img/s, ms per batch). Run it on an idle machine; the exported files go to
``--output-dir`` (kept, so a rerun with the same settings skips the export).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

CONFIG = os.path.join(ROOT, "configs/dynamic_atss/dynamic_atss_R_18_FPN_synthetic.yaml")


def _batches(batch: int, h: int, w: int):
    """(uniform, mixed) ImageLists: ``batch`` images of h x w; in the mixed batch every second one
    is h/2 x w/2, zero-padded as the loader pads."""
    from maskrcnn_benchmark.export.runtime import fixed_batch
    from maskrcnn_benchmark.structures.image_list import ImageList

    uniform = fixed_batch(batch, h, w)
    x = uniform.tensors.clone()
    sizes = [(h, w) if i % 2 == 0 else (h // 2, w // 2) for i in range(batch)]
    for i, (hi, wi) in enumerate(sizes):
        x[i, :, hi:, :] = 0
        x[i, :, :, wi:] = 0
    return uniform, ImageList(x, sizes)


def main(argv=None) -> List[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", default=CONFIG)
    p.add_argument("--weight", default="", help="weights (default: random; speed only)")
    p.add_argument("--height", type=int, default=224)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--skip-onnx", action="store_true")
    p.add_argument("--skip-aoti", action="store_true")
    p.add_argument("--output-dir", default=os.path.join(ROOT, "bench_deploy_output"))
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)

    import torch

    from maskrcnn_benchmark.engine.inference import build_test_model
    from maskrcnn_benchmark.modeling.dense_heads import get_num_classes, set_num_classes
    from maskrcnn_benchmark.config import setup_cfg

    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHT", args.weight, *args.opts]
    cfg = setup_cfg(args.config_file, opts)
    if get_num_classes(cfg) == 0:  # random weights without a dataset: the synthetic 6 classes
        cfg.defrost()
        set_num_classes(cfg, 7)
        cfg.freeze()
    cfg, model = build_test_model(cfg)
    div = model.size_divisibility
    if div > 0 and (args.height % div or args.width % div):
        p.error(f"--height / --width must be multiples of DATALOADER.SIZE_DIVISIBILITY ({div})")
    uniform, mixed = _batches(args.batch, args.height, args.width)
    cases = []  # (name, fn(batch), batch): timed round by round, interleaved (see the docstring)

    def eager(invariant: bool):
        def run(batch):
            model.batch_invariant = (False, invariant)
            return model(batch)
        return run

    for invariant in (True, False):
        tag = "masks on" if invariant else "masks off (releases)"
        cases += [(f"eager, uniform, {tag}", eager(invariant), uniform),
                  (f"eager, mixed, {tag}", eager(invariant), mixed)]
    model.batch_invariant = (False, True)
    os.makedirs(args.output_dir, exist_ok=True)
    stem = os.path.join(args.output_dir, f"{os.path.basename(args.config_file)[:-5]}")
    if not args.skip_onnx:
        from maskrcnn_benchmark.export.onnx_export import export_detector
        from maskrcnn_benchmark.export.runtime import OnnxDetector, create_session

        path = f"{stem}_dynamic_nms.onnx"
        if not os.path.isfile(path):
            export_detector(cfg, path, dynamic_batch=True, dynamic_shape=True, height=args.height,
                            width=args.width, postprocess="nms", model=model, verify=False)
        detector = OnnxDetector(create_session(path))
        cases += [("onnxruntime fp32, uniform", detector, uniform), ("onnxruntime fp32, mixed", detector, mixed)]
    if not args.skip_aoti:
        from maskrcnn_benchmark.export.aoti import AotiDetector, export_aoti, load_aoti

        path = f"{stem}.pt2"
        if not os.path.isfile(path):
            export_aoti(model, path)
        detector = AotiDetector(load_aoti(path), model)
        cases += [("aotinductor fp32, uniform", detector, uniform), ("aotinductor fp32, mixed", detector, mixed)]
    times = {name: [] for name, _, _ in cases}
    runtimes = []  # the rows of one runtime together: onnxruntime's threads spin on after a call
    for case in cases:  # and would slow the next runtime's call down
        if not runtimes or runtimes[-1][0][0].split(",")[0] != case[0].split(",")[0]:
            runtimes.append([])
        runtimes[-1].append(case)
    with torch.inference_mode():
        for group in runtimes:
            for name, fn, batch in group:
                for _ in range(args.warmup):
                    fn(batch)
            for _ in range(max(1, args.iters)):
                for name, fn, batch in group:
                    start = time.perf_counter()
                    fn(batch)
                    times[name].append(time.perf_counter() - start)
    model.batch_invariant = (False, True)
    rows = [dict(backend=name, ms_per_batch=1000 * statistics.median(times[name]),
                 img_per_s=args.batch / statistics.median(times[name])) for name, _, _ in cases]
    print(f"\n{args.config_file}, {args.height} x {args.width}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads\n")
    print("| backend | ms / batch | img/s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['ms_per_batch']:.1f} | {r['img_per_s']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
