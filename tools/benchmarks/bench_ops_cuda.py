"""GPU benchmark of the compiled CUDA ops against torchvision's CUDA ops, on the same inputs.

Fixed workloads (seed 0), each in float32 and float16:
  * nms: 1k / 5k / 20k boxes clustered around ~N/25 objects in a 1333x800 image, IoU 0.5;
  * batched_nms: 20k boxes, 80 classes (torchvision.ops.batched_nms);
  * box_iou: 200k x 500 boxes;
  * sigmoid focal loss forward + backward: 200k x 80 logits, gamma 2, alpha 0.25 (torchvision's
    sigmoid_focal_loss on the one-hot targets, reduction "none");
  * DCN c4 layer forward + backward: modulated deform_conv2d, 256 -> 256 channels, 3x3, batch 2,
    50 x 84 (ResNet-50 stage 4 of an 800 x 1333 image).

Timing: CUDA events around each call after warm-up, torch.cuda.synchronize() before reading them;
the median over --iters calls. Each row also says whether the two results agree (same kept indices
for NMS, up to tied scores; max abs difference otherwise).

Usage: python tools/benchmarks/bench_ops_cuda.py [--iters 20] [--warmup 3] [--dtypes float32,float16]
       [--quick] [--out FILE] [--device cpu]
(--device cpu runs the same code on the CPU kernels with wall-clock timing: a functional dry run of
the script, as tools/device_check.sh --dry-run does, not a benchmark.)
Needs a GPU, the extension built with the CUDA kernels (MASKRCNN_BENCHMARK_CUDA_KERNELS=1; without
them the ops run the portable fallbacks and the table says so) and torchvision.
"""
import argparse
import os
import statistics
import sys
import time
from typing import Callable, List, Optional

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))  # run from a checkout


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=20, help="timed calls per op (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    p.add_argument("--dtypes", default="float32,float16", help="comma-separated: float32, float16, bfloat16")
    p.add_argument("--quick", action="store_true", help="small workloads (a functional check, not a benchmark)")
    p.add_argument("--out", default="", help="also write the table to this file")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu: a functional dry run on the CPU kernels (wall-clock timing)")
    args = p.parse_args(argv)
    args.dtypes = [getattr(torch, d.strip()) for d in args.dtypes.split(",") if d.strip()]
    return args


def time_ms(fn: Callable[[], object], iters: int, warmup: int, device: torch.device) -> float:
    """Median milliseconds of fn() by CUDA events (on a CUDA device; wall clock on the CPU)."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def clustered_boxes(n: int, seed: int = 0, width: float = 1333.0, height: float = 800.0):
    g = torch.Generator().manual_seed(seed)
    num_objects = max(n // 25, 1)
    wh = torch.rand(num_objects, 2, generator=g) * torch.tensor([300.0, 200.0]) + 10
    ctr = torch.rand(num_objects, 2, generator=g) * torch.tensor([width, height])
    obj = torch.randint(num_objects, (n,), generator=g)
    jitter = torch.randn(n, 4, generator=g) * 0.1
    c = ctr[obj] + jitter[:, :2] * wh[obj]
    s = wh[obj] * (1 + jitter[:, 2:]).clamp(min=0.3)
    return torch.cat([c - s / 2, c + s / 2], dim=1), torch.rand(n, generator=g)


def random_boxes(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 1000
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 200 + 1], dim=1)


def same_keep(a, b, scores) -> str:
    a, b = a.cpu(), b.cpu()
    if torch.equal(a, b):
        return "same"
    if a.shape == b.shape and torch.equal(scores.cpu()[a], scores.cpu()[b]):
        return "same up to ties"
    return f"DIFFERENT ({a.numel()} vs {b.numel()} kept)"


def max_diff(a, b) -> str:
    return f"max |diff| {(a.float() - b.float()).abs().max().item():.2e}"


def rows_for(dtype, args, tv, L) -> List[tuple]:
    dev = torch.device(args.device)
    rows = []
    name = str(dtype).replace("torch.", "")

    def add(op, workload, ours, theirs, agree):
        t_ours = time_ms(ours, args.iters, args.warmup, dev)
        t_tv = time_ms(theirs, args.iters, args.warmup, dev) if theirs is not None else float("nan")
        rows.append((op, workload, name, t_ours, t_tv, agree))

    sizes = (1000, 5000) if args.quick else (1000, 5000, 20000)
    for n in sizes:
        boxes, scores = clustered_boxes(n)
        boxes, scores = boxes.to(dev, dtype), scores.to(dev, dtype)
        agree = same_keep(L.nms(boxes, scores, 0.5), tv.nms(boxes, scores, 0.5), scores)
        add("nms", f"{n} boxes", lambda: L.nms(boxes, scores, 0.5), lambda: tv.nms(boxes, scores, 0.5), agree)

    n = 5000 if args.quick else 20000
    boxes, scores = clustered_boxes(n, seed=1)
    idxs = torch.randint(80, (n,), generator=torch.Generator().manual_seed(2)).to(dev)
    boxes, scores = boxes.to(dev, dtype), scores.to(dev, dtype)
    agree = same_keep(L.batched_nms(boxes, scores, idxs, 0.5), tv.batched_nms(boxes, scores, idxs, 0.5), scores)
    add("batched_nms", f"{n} boxes, 80 classes", lambda: L.batched_nms(boxes, scores, idxs, 0.5),
        lambda: tv.batched_nms(boxes, scores, idxs, 0.5), agree)

    n1, n2 = (20000, 500) if args.quick else (200000, 500)
    b1, b2 = random_boxes(n1, 3).to(dev, dtype), random_boxes(n2, 4).to(dev, dtype)
    agree = max_diff(L.box_iou(b1, b2), tv.box_iou(b1, b2))
    add("box_iou", f"{n1} x {n2}", lambda: L.box_iou(b1, b2), lambda: tv.box_iou(b1, b2), agree)

    n, c = (20000, 80) if args.quick else (200000, 80)
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(n, c, generator=g) * 3).to(dev, dtype).requires_grad_(True)
    labels = torch.randint(0, c + 1, (n,), generator=g).to(dev)  # 0: background
    onehot = torch.nn.functional.one_hot(labels, c + 1)[:, 1:].to(dtype)
    grad = torch.ones(n, c, device=dev, dtype=dtype)

    def ours_focal():
        loss = L.sigmoid_focal_loss(logits, labels, 2.0, 0.25)
        (g_ours,) = torch.autograd.grad(loss, logits, grad)
        return loss, g_ours

    def tv_focal():
        loss = tv.sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="none")
        (g_tv,) = torch.autograd.grad(loss, logits, grad)
        return loss, g_tv

    (lo, go), (lt, gt) = ours_focal(), tv_focal()
    add("focal loss fwd+bwd", f"{n} x {c}", ours_focal, tv_focal, f"loss {max_diff(lo, lt)}, grad {max_diff(go, gt)}")

    B, C, H, W = (1, 64, 25, 42) if args.quick else (2, 256, 50, 84)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(B, C, H, W, generator=g).to(dev, dtype).requires_grad_(True)
    offset = (torch.randn(B, 18, H, W, generator=g) * 2).to(dev, dtype).requires_grad_(True)
    mask = torch.rand(B, 9, H, W, generator=g).to(dev, dtype).requires_grad_(True)
    weight = (torch.randn(C, C, 3, 3, generator=g) / (3 * C ** 0.5)).to(dev, dtype).requires_grad_(True)
    gout = torch.randn(B, C, H, W, generator=g).to(dev, dtype)
    leaves = (x, offset, mask, weight)

    def ours_dcn():
        out = L.deform_conv2d(x, offset, mask, weight, None, padding=1)
        return (out,) + torch.autograd.grad(out, leaves, gout)

    def tv_dcn():
        out = tv.deform_conv2d(x, offset, weight, None, padding=(1, 1), mask=mask)
        return (out,) + torch.autograd.grad(out, leaves, gout)

    ro, rt = ours_dcn(), tv_dcn()
    agree = ", ".join(f"{k} {max_diff(a, b)}" for k, a, b in zip(("out", "dx", "doff", "dmask", "dw"), ro, rt))
    add("DCN c4 fwd+bwd", f"{B}x{C}x{H}x{W}, 3x3", ours_dcn, tv_dcn, agree)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_ops_cuda.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "for the CPU kernels run tools/benchmarks/bench_ops.py", file=sys.stderr)
        return 2
    try:
        import torchvision.ops as tv
    except ImportError:
        print("bench_ops_cuda.py compares against torchvision: install torchvision (matching your torch)",
              file=sys.stderr)
        return 2
    import maskrcnn_benchmark.layers as L
    from maskrcnn_benchmark.layers import _ops

    _ops.load_ops()
    key = args.device.upper()
    kernels = {op: ("compiled" if _ops.has_compiled_kernel(op, key) else "FALLBACK") for op in _ops.OP_NAMES}
    machine = (f"GPU: {torch.cuda.get_device_name()}" if args.device == "cuda"
               else "CPU (--device cpu: a dry run of the script, not a benchmark)")
    header = [f"{machine}, torch {torch.__version__}, CUDA {torch.version.cuda}",
              f"maskrcnn_benchmark {key} kernels: " + ", ".join(f"{k}={v}" for k, v in kernels.items()),
              f"median of {args.iters} calls after {args.warmup} warm-up, "
              + ("CUDA events" if args.device == "cuda" else "wall clock") + (" (--quick)" if args.quick else ""),
              "",
              "| op | workload | dtype | ours (ms) | torchvision (ms) | speed-up | agreement |",
              "|---|---|---|---:|---:|---:|---|"]
    lines = list(header)
    print("\n".join(header), flush=True)
    for dtype in args.dtypes:
        for op, workload, name, t_ours, t_tv, agree in rows_for(dtype, args, tv, L):
            line = f"| {op} | {workload} | {name} | {t_ours:.3f} | {t_tv:.3f} | {t_tv / t_ours:.2f}x | {agree} |"
            print(line, flush=True)
            lines.append(line)
    if args.out:
        from maskrcnn_benchmark.utils.io import atomic_write_text

        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_text(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
