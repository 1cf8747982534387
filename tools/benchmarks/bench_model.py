#!/usr/bin/env python
"""Forward+backward (training step) and inference time of a full detector per image on the CPU.

    python tools/benchmarks/bench_model.py --config-file configs/dynamic_atss/dynamic_atss_R_50_FPN_1x.yaml \
        [--size 800 1333] [--iters 3] [--threads N]

Random weights (no checkpoint needed), one image of the given (h, w) size with 10 random boxes of 8 classes.
The timed step is: forward with targets (assignment + losses) + backward. Prints a markdown row.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from maskrcnn_benchmark.config import add_config_args, setup_cfg  # noqa: E402
from maskrcnn_benchmark.modeling.detector import build_detection_model  # noqa: E402
from maskrcnn_benchmark.structures import BoxList  # noqa: E402


def random_target(h: int, w: int, n: int, num_fg: int, gen: torch.Generator) -> BoxList:
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.8, h * 0.8])
    wh = 16 + torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.3, h * 0.3])
    t = BoxList(torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], 1), (w, h))
    t.add_field("labels", torch.randint(1, num_fg + 1, (n,), generator=gen))
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(p, default="configs/dynamic_atss/dynamic_atss_R_50_FPN_1x.yaml")
    p.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = setup_cfg(args.config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHT", ""] + args.opts,
                    allow_python=args.allow_python_config)
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    h, w = args.size
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(3, h, w, generator=gen) * 50
    target = random_target(h, w, 10, 8, gen)

    def train_step():
        model.train()
        losses = model([image], [target])
        sum(losses.values()).backward()

    @torch.no_grad()
    def infer():
        model.eval()
        model([image])

    def timeit(fn):
        fn()  # warm-up
        times = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    t_train, t_infer = timeit(train_step), timeit(infer)
    print("| config | image (h x w) | threads | train step fwd+bwd (s/img) | inference (s/img) |")
    print("|---|---|---|---|---|")
    print(f"| {os.path.basename(args.config_file)} | {h} x {w} | {torch.get_num_threads()} | "
          f"{t_train:.2f} | {t_infer:.2f} |")


if __name__ == "__main__":
    main()
