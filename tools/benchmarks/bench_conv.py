#!/usr/bin/env python
"""Throughput (GFLOP/s) of one 3x3 convolution, forward and forward + backward, on the CPU.

    python tools/benchmarks/bench_conv.py [--channels 256] [--sizes 64x96 16x24] [--iters 20] [--bf16]
                                          [--winograd]

The convolution of the detection heads and FPN (C -> C channels, 3 x 3, stride 1, padding 1, bias),
batch 1, in the default (NCHW) and the channels-last layout; with ``--bf16`` also under
``torch.autocast("cpu", bfloat16)``. FLOPs = 2 x multiply-adds (forward: H W C^2 9; forward +
backward: 3 x that, grad of the input and of the weight). Compare the figure with the machine's
peak (cores x GHz x FLOPs per cycle, e.g. 64 for two AVX-512 FMA units) to see how close to the
hardware a conv-bound step already is. With ``--winograd`` each fp32 row is followed by the same
convolution as Winograd F(4x4, 3x3) (``layers/winograd.winograd_conv2d``, MODEL.WINOGRAD, here
at every size, without its MIN_TILES rule); its GFLOP/s are the direct convolution's FLOPs over
its time (an effective rate, which can exceed the peak).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def bench(channels: int, h: int, w: int, channels_last: bool, bf16: bool, iters: int, winograd: bool = False):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
    x = torch.randn(1, channels, h, w)
    grad = torch.randn(1, channels, h, w)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        grad = grad.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def forward():
        if winograd:
            from maskrcnn_benchmark.layers.winograd import winograd_conv2d

            return winograd_conv2d(x, conv.weight, conv.bias)
        with ctx():
            return conv(x)

    def forward_backward():
        y = forward()
        y.backward(grad.to(y.dtype))
    for _ in range(3):
        forward_backward()
    t0 = time.perf_counter()
    for _ in range(iters):
        forward()
    t1 = time.perf_counter()
    for _ in range(iters):
        forward_backward()
    t2 = time.perf_counter()
    flop = 2 * h * w * channels * channels * 9
    fwd, fwd_bwd = (t1 - t0) / iters, (t2 - t1) / iters
    return fwd, flop / fwd / 1e9, fwd_bwd, 3 * flop / fwd_bwd / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--sizes", nargs="+", default=["64x96", "16x24"], help="HxW feature sizes")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--bf16", action="store_true", help="also under bf16 autocast")
    p.add_argument("--winograd", action="store_true", help="also fp32 Winograd F(4x4, 3x3) (MODEL.WINOGRAD)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 3x3 conv {args.channels} -> {args.channels}")
    print("| size | layout | precision | algorithm | forward ms | GFLOP/s | forward + backward ms | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        h, w = (int(v) for v in size.lower().split("x"))
        for bf16 in ([False, True] if args.bf16 else [False]):
            for cl in (False, True):
                for wino in ([False, True] if args.winograd and not bf16 else [False]):
                    f, fr, fb, fbr = bench(args.channels, h, w, cl, bf16, args.iters, wino)
                    print(f"| {h}x{w} | {'channels-last' if cl else 'NCHW'} | {'bf16' if bf16 else 'fp32'} | "
                          f"{'winograd' if wino else 'direct'} | {1000 * f:.2f} | {fr:.0f} | {1000 * fb:.2f} | {fbr:.0f} |")


if __name__ == "__main__":
    main()
