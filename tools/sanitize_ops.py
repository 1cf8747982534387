#!/usr/bin/env python
"""Calls every compiled op on small, awkward inputs: the workload of the compute-sanitizer step of
tools/device_check.sh (memcheck: out-of-bounds and misaligned accesses; racecheck: shared-memory
races in the NMS kernels).

    compute-sanitizer --tool memcheck python tools/sanitize_ops.py
    python tools/sanitize_ops.py --device cpu --dtypes float32        (the CPU kernels; a dry run)

For each N in --sizes (default 0, 1, 63, 64, 65, 130: empty, one, around the 64-box words of the
NMS mask and the warp size) and each dtype (default float32, float16, bfloat16), on non-contiguous
inputs (strided views of larger tensors):
  * nms and batched_nms of N boxes (8 classes), IoU threshold 0.5;
  * box_iou of N x (N + 3) boxes;
  * sigmoid_focal_loss forward + backward of N x 80 logits (targets -1..80: ignored, background and
    every class), once with a full grad_output and once with one value broadcast (the .sum() path);
  * deform_conv2d forward + backward of a batch of N images [4, 5, 6] (3x3, padding 1, 2 groups,
    2 deformable groups), offsets pushing samples outside the image.
Each call is followed by a device synchronisation, so an error is reported at the op that made it;
the results are checked for shape and finiteness. Prints one line per (op, dtype); exits 1 if any
call raised. Seeded, deterministic inputs.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, List, Optional

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))  # run from a checkout

SIZES = (0, 1, 63, 64, 65, 130)
DTYPES = ("float32", "float16", "bfloat16")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated dtypes")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated N")
    args = p.parse_args(argv)
    args.dtypes = [getattr(torch, d.strip()) for d in args.dtypes.split(",") if d.strip()]
    args.sizes = [int(n) for n in args.sizes.split(",") if n.strip()]
    return args


def strided(shape, generator, device, dtype, scale=1.0, offset=0.0):
    """A [shape] view with stride 2 in the last dimension (never contiguous unless it has <= 1 element)."""
    full = torch.rand(*shape[:-1], 2 * shape[-1], generator=generator) * scale + offset
    return full.to(device, dtype)[..., ::2]


def boxes(n, generator, device, dtype):
    xy = strided((n, 2), generator, device, torch.float32, scale=100.0)
    wh = strided((n, 2), generator, device, torch.float32, scale=50.0, offset=1.0)
    b = torch.cat([xy, xy + wh], dim=1).to(dtype)
    return torch.stack([b[:, 0], b[:, 1], b[:, 2], b[:, 3]], dim=0).t()  # [n, 4], strides (1, n)


def run_nms(n, g, dev, dtype):
    from maskrcnn_benchmark.layers import batched_nms, nms

    b, s = boxes(n, g, dev, dtype), strided((n,), g, dev, dtype)
    keep = nms(b, s, 0.5)
    idxs = torch.randint(8, (2 * n,), generator=g).to(dev)[::2]
    keep_b = batched_nms(b, s, idxs, 0.5)
    assert keep.numel() <= n and keep_b.numel() <= n and keep_b.numel() >= keep.numel()
    return keep, keep_b


def run_box_iou(n, g, dev, dtype):
    from maskrcnn_benchmark.layers import box_iou

    iou = box_iou(boxes(n, g, dev, dtype), boxes(n + 3, g, dev, dtype))
    assert iou.shape == (n, n + 3)
    return iou


def run_focal(n, g, dev, dtype):
    from maskrcnn_benchmark.layers import sigmoid_focal_loss

    c = 80
    logits = (torch.randn(c, n, generator=g) * 4).to(dev, dtype).t().requires_grad_(True)  # [n, c], strides (1, n)
    targets = torch.randint(-1, c + 1, (2 * n,), generator=g).to(dev)[::2]
    loss = sigmoid_focal_loss(logits, targets, 2.0, 0.25)
    loss.backward(torch.rand(n, c, generator=g).to(dev, dtype))
    grad_full = logits.grad
    logits.grad = None
    sigmoid_focal_loss(logits, targets, 2.0, 0.25).sum().backward()  # grad_output broadcast from one value
    return loss, grad_full, logits.grad


def run_deform_conv(n, g, dev, dtype):
    from maskrcnn_benchmark.layers import deform_conv2d

    C, H, W, O = 4, 5, 6, 4
    x = torch.randn(n, C, H, 2 * W, generator=g).to(dev, dtype)[..., ::2].requires_grad_(True)
    offset = ((torch.rand(n, 2 * 2 * 9, H, W, generator=g) * 2 - 1) * 4).to(dev, dtype)
    offset = offset.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    mask = torch.rand(n, 2 * 9, H, W, generator=g).to(dev, dtype).requires_grad_(True)
    weight = (torch.randn(O, C // 2, 3, 3, generator=g) / 3).to(dev, dtype).requires_grad_(True)
    bias = torch.randn(O, generator=g).to(dev, dtype).requires_grad_(True)
    out = deform_conv2d(x, offset, mask, weight, bias, padding=1, groups=2, deformable_groups=2)
    assert out.shape == (n, O, H, W)
    out.backward(torch.randn(out.shape, generator=g).to(dev, dtype))
    return out, x.grad, offset.grad, mask.grad, weight.grad, bias.grad


OPS = (("nms + batched_nms", run_nms), ("box_iou", run_box_iou), ("sigmoid_focal_loss fwd+bwd", run_focal),
       ("deform_conv2d fwd+bwd", run_deform_conv))


def check(name: str, fn: Callable, sizes, dev, dtype) -> Optional[str]:
    """None if every size ran with finite results, else the error."""
    try:
        for n in sizes:
            g = torch.Generator().manual_seed(n)
            results = fn(n, g, dev, dtype)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            for t in results:
                if t is not None and t.is_floating_point() and not torch.isfinite(t).all():
                    return f"N={n}: non-finite values"
    except Exception as e:  # noqa: BLE001 - reported per op, the others still run
        return f"N={n}: {type(e).__name__}: {e}"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("sanitize_ops.py: no CUDA device (torch.cuda.is_available() is False); --device cpu runs the CPU "
              "kernels", file=sys.stderr)
        return 2
    from maskrcnn_benchmark.layers import _ops

    _ops.load_ops()
    kinds = {op: "compiled" if _ops.has_compiled_kernel(op, dev.type.upper()) else "FALLBACK" for op in _ops.OP_NAMES}
    print(f"device {dev}, torch {torch.__version__}; kernels: " + ", ".join(f"{k}={v}" for k, v in kinds.items()))
    failed = 0
    for dtype in args.dtypes:
        for name, fn in OPS:
            error = check(name, fn, args.sizes, dev, dtype)
            failed += error is not None
            print(f"{name:28s} {str(dtype).replace('torch.', ''):9s} N={args.sizes}: {error or 'ok'}", flush=True)
    print(f"sanitize_ops: {failed} failed" if failed else "sanitize_ops: all ok")
    return 1 if failed else 0


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    sys.exit(run_tool(main))
