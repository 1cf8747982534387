#!/usr/bin/env python
"""Interleaved A/B of training-step variants of one detector config, in one process (CPU).

    python tools/benchmarks/bench_train_ab.py --config-file configs/retinanet/retinanet_R_50_FPN_1x.yaml \
        --size 512 768 --variant default: --variant cl:MODEL.CHANNELS_LAST=True \
        --variant cl_bf16:MODEL.CHANNELS_LAST=True,amp=bf16 [--rounds 11] [--warmup 3] [--batch 1]

A variant is ``NAME:ITEM,ITEM,...`` where an item is a config override ``KEY=VALUE`` (YAML-parsed
value), ``amp=bf16`` (the step's forward under ``torch.autocast("cpu", bfloat16)``, what
``SOLVER.AMP bf16`` does in the trainer) or ``unfused_frozen_bn`` (the ResNet runs ``bn(conv(x))``
instead of :func:`maskrcnn_benchmark.layers.batch_norm.conv_norm`, to measure that fusion).

Every variant builds its own model from the same seed (random weights) and the same random batch
(``--batch`` images of ``--size``, 10 boxes each of classes 1..6); the step is forward with targets + backward +
SGD (lr 0, so every round sees the same weights). The variants run in turn, ``--warmup`` untimed
rounds then ``--rounds`` timed ones, so a drift of the machine's speed affects all of them alike
(separate processes minutes apart are not comparable on a shared CPU). Prints the median, min
and max per variant and the ratio of medians to the first variant (> 1: faster than it).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import yaml  # noqa: E402

from maskrcnn_benchmark.layers import batch_norm  # noqa: E402
from maskrcnn_benchmark.modeling.backbone import resnet  # noqa: E402
from maskrcnn_benchmark.modeling.detector import build_detection_model  # noqa: E402
from maskrcnn_benchmark.utils.miscellaneous import add_config_args, setup_cfg  # noqa: E402
from tools.benchmarks.bench_model import random_target  # noqa: E402


# labels of the random boxes: 1..NUM_FG, valid for every shipped config (the synthetic ones have 6 classes)
NUM_FG = 6


def parse_variant(text: str) -> Tuple[str, List, str, bool]:
    """"NAME:KEY=VALUE,amp=bf16,unfused_frozen_bn" -> (name, opts, amp, unfused)."""
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise ValueError(f"--variant {text!r}: expected NAME:ITEM,ITEM,... (ITEM: KEY=VALUE, amp=bf16, "
                         f"unfused_frozen_bn; NAME: for the defaults)")
    opts, amp, unfused = [], "", False
    for item in filter(None, (s.strip() for s in rest.split(","))):
        if item == "unfused_frozen_bn":
            unfused = True
        elif item.startswith("amp="):
            amp = item[4:]
            if amp not in ("", "bf16"):
                raise ValueError(f"--variant {text!r}: amp must be bf16, got {amp!r}")
        elif "=" in item:
            key, value = item.split("=", 1)
            opts += [key, yaml.safe_load(value)]
        else:
            raise ValueError(f"--variant {text!r}: item {item!r} is not KEY=VALUE, amp=bf16 or unfused_frozen_bn")
    return name, opts, amp, unfused


def random_batch(batch: int, h: int, w: int, num_fg: int, seed: int = 0):
    """``batch`` random images [B, 3, h, w] and their targets (bench_model's ``random_target``, 10 boxes each)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, h, w, generator=g)
    return images, [random_target(h, w, 10, num_fg, g) for _ in range(batch)]


def make_step(config_file: str, base_opts: List, variant: Tuple[str, List, str, bool], batch, size) -> Callable[[], None]:
    _, opts, amp, unfused = variant
    cfg = setup_cfg(config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHT", ""] + base_opts + opts)
    torch.manual_seed(0)
    model = build_detection_model(cfg).train()
    images, targets = random_batch(batch, size[0], size[1], NUM_FG)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9)

    def unfused_conv_norm(conv, norm, x):
        return norm(conv(x))

    def step() -> None:
        resnet.conv_norm = unfused_conv_norm if unfused else batch_norm.conv_norm
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
        try:
            with ctx:
                loss = sum(model(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        finally:
            resnet.conv_norm = batch_norm.conv_norm
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(p, default="configs/retinanet/retinanet_R_50_FPN_1x.yaml")
    p.add_argument("--size", type=int, nargs=2, default=(512, 768), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--variant", action="append", default=[], help="NAME:ITEM,ITEM,... (repeat; see the docstring)")
    p.add_argument("--rounds", type=int, default=11, help="timed rounds")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every variant")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        variants = [parse_variant(v) for v in (args.variant or ["default:"])]
    except ValueError as e:
        p.error(str(e))
    steps: Dict[str, Callable[[], None]] = {
        v[0]: make_step(args.config_file, list(args.opts), v, args.batch, tuple(args.size)) for v in variants}
    times: Dict[str, List[float]] = {name: [] for name in steps}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.config_file}, batch {args.batch} x "
          f"{args.size[0]} x {args.size[1]}, {args.rounds} interleaved rounds after {args.warmup} warm-up, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    for rnd in range(args.warmup + args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if rnd >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    first = statistics.median(times[variants[0][0]])
    print("| variant | train step ms (median) | min | max | speed vs " + variants[0][0] + " |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {1000 * med:.0f} | {1000 * min(ts):.0f} | {1000 * max(ts):.0f} | {first / med:.2f}x |")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
