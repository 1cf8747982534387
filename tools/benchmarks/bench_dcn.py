"""CPU benchmark of one modulated deformable convolution (DCNv2) layer, forward + backward.

Fixed workload: a ResNet res4 layer (256 -> 256 channels, 3x3, stride 1, padding 1, one
deformable group) on the stride-16 feature map of an 800x1333 image (50x84), batch 1,
float32, random fractional offsets (some samples fall outside the map) and masks in [0, 1].

Compared against
  * ``plain-torch reference``: the same DCNv2 written with torch.gather (bilinear sampling of
    every tap, then a matmul), differentiated by autograd;
  * ``conv2d``: torch.nn.functional.conv2d of the same shape (what DCN costs over a plain conv).

Usage: python tools/benchmarks/bench_dcn.py [--height 50 --width 84 --channels 256 --iters 5 --threads 2]
Prints a markdown table (median and min over iterations after one warm-up; the min is the
less noisy figure on a shared machine).
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))  # run from a checkout
from maskrcnn_benchmark.layers.dcn import deform_conv2d  # noqa: E402


def gather_deform_conv2d(x, offset, mask, weight, bias, stride=1, padding=1, dilation=1):
    """Vectorised plain-torch DCNv2 (groups = deformable_groups = 1), zeros outside the image."""
    B, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    Ho, Wo = offset.shape[2:]
    K, L = kh * kw, Ho * Wo
    ki = (torch.arange(kh) * dilation).repeat_interleave(kw).to(x)
    kj = (torch.arange(kw) * dilation).repeat(kh).to(x)
    oy = (torch.arange(Ho) * stride - padding).to(x)
    ox = (torch.arange(Wo) * stride - padding).to(x)
    off = offset.view(B, K, 2, Ho, Wo)
    py = ki.view(1, K, 1, 1) + oy.view(1, 1, Ho, 1) + off[:, :, 0]  # [B, K, Ho, Wo]
    px = kj.view(1, K, 1, 1) + ox.view(1, 1, 1, Wo) + off[:, :, 1]
    y0, x0 = py.floor().detach(), px.floor().detach()
    ly, lx = py - y0, px - x0
    xs = x.reshape(B, C, H * W)
    cols = 0
    for dy, dx, wgt in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yy, xx = y0 + dy, x0 + dx
        valid = ((yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)).to(x)
        idx = (yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1)).long().view(B, 1, K * L)
        cols = cols + torch.gather(xs, 2, idx.expand(B, C, K * L)) * (wgt * valid * mask).view(B, 1, K * L)
    out = torch.matmul(weight.reshape(O, C * K), cols.view(B, C * K, L)).view(B, O, Ho, Wo)
    return out + bias.view(1, O, 1, 1) if bias is not None else out


def time_fwd_bwd(fn, leaves, iters):
    """Seconds over `iters` runs after a warm-up: median forward, median and min forward+backward."""
    fwd, total = [], []
    for it in range(iters + 1):
        for t in leaves:
            t.grad = None
        t0 = time.perf_counter()
        out = fn()
        t1 = time.perf_counter()
        out.backward(torch.ones_like(out))
        t2 = time.perf_counter()
        if it > 0:
            fwd.append(t1 - t0)
            total.append(t2 - t0)
    return statistics.median(fwd), statistics.median(total), min(total)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=50)
    parser.add_argument("--width", type=int, default=84)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: keep the default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    B, C, H, W = args.batch, args.channels, args.height, args.width
    x = torch.randn(B, C, H, W, requires_grad=True)
    weight = (torch.randn(C, C, 3, 3) * 0.02).requires_grad_()
    bias = torch.zeros(C, requires_grad=True)
    offset = ((torch.rand(B, 18, H, W) * 2 - 1) * 4).requires_grad_()
    mask = torch.rand(B, 9, H, W, requires_grad=True)
    leaves = [x, weight, bias, offset, mask]

    # The two DCN implementations must agree before their times mean anything.
    with torch.no_grad():
        diff = (deform_conv2d(x, offset, mask, weight, bias, padding=1)
                - gather_deform_conv2d(x, offset, mask, weight, bias)).abs().max().item()
    assert diff < 1e-3, f"compiled op and reference disagree (max abs diff {diff})"

    rows = [
        ("deform_conv2d (compiled op)", lambda: deform_conv2d(x, offset, mask, weight, bias, padding=1)),
        ("plain-torch gather reference", lambda: gather_deform_conv2d(x, offset, mask, weight, bias)),
        ("F.conv2d (no deformation)", lambda: F.conv2d(x, weight, bias, padding=1)),
    ]
    print(f"DCNv2 layer B={B}, {C}->{C}, 3x3, {H}x{W}, float32, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.iters}")
    print()
    print("| implementation | forward (ms, median) | forward+backward (ms, median) | forward+backward (ms, min) |")
    print("|---|---|---|---|")
    for name, fn in rows:
        f, t, t_min = time_fwd_bwd(fn, leaves, args.iters)
        print(f"| {name} | {f * 1e3:.1f} | {t * 1e3:.1f} | {t_min * 1e3:.1f} |")


if __name__ == "__main__":
    main()
