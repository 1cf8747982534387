"""CPU benchmark of the compiled ops (nms, batched_nms, box_iou, sigmoid_focal_loss).

Fixed workloads (float32, seed 0):
  * NMS on 1k / 5k / 20k boxes clustered around ~N/25 objects in a 1333x800 image (many overlaps),
    IoU threshold 0.5; batched NMS with 80 classes on 5k / 20k boxes;
  * box_iou of 100k x 100 and 200k x 500 boxes;
  * sigmoid focal loss forward + backward on 100k x 80 logits (gamma 2, alpha 0.25).

Each is compared against the straightforward PyTorch equivalent:
  * NMS: vectorised torch loop (one IoU row per kept box, mask the survivors); batched NMS: the
    same run per class (a loop over the classes present);
  * "python greedy": a plain Python-loop greedy NMS (1k and 5k only);
  * IoU: broadcasting torch ops; focal loss: torch ops (maskrcnn-benchmark's Python formula) + autograd.

Usage: python tools/benchmarks/bench_ops.py [--repeats 5] [--threads N] [--out output/benchmarks/bench_ops.md]
Prints a markdown table of medians over repeats (after one warm-up; a reference whose warm-up takes
over 3 s is timed once) and writes it to --out.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))  # run from a checkout
from maskrcnn_benchmark.layers import batched_nms, box_iou, nms, sigmoid_focal_loss  # noqa: E402


# ----------------------------------------------------------------------------- workloads
def clustered_boxes(n, seed=0, width=1333.0, height=800.0):
    g = torch.Generator().manual_seed(seed)
    num_objects = max(n // 25, 1)
    wh = torch.rand(num_objects, 2, generator=g) * torch.tensor([300.0, 200.0]) + 10
    ctr = torch.rand(num_objects, 2, generator=g) * torch.tensor([width, height])
    obj = torch.randint(num_objects, (n,), generator=g)
    jitter = torch.randn(n, 4, generator=g) * 0.1
    c = ctr[obj] + jitter[:, :2] * wh[obj]
    s = wh[obj] * (1 + jitter[:, 2:]).clamp(min=0.3)
    boxes = torch.cat([c - s / 2, c + s / 2], dim=1)
    scores = torch.rand(n, generator=g)
    return boxes, scores


def random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 1000
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 200 + 1], dim=1)


# ----------------------------------------------------------------------------- references
def torch_box_iou(b1, b2):
    lt = torch.max(b1[:, None, :2], b2[None, :, :2])
    rb = torch.min(b1[:, None, 2:], b2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    a1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    a2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    union = a1[:, None] + a2[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def torch_nms(boxes, scores, threshold):
    order = scores.argsort(descending=True, stable=True)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iou = torch_box_iou(boxes[i].unsqueeze(0), boxes[rest])[0]
        order = rest[iou <= threshold]
    return torch.stack(keep) if keep else torch.empty(0, dtype=torch.int64)


def torch_batched_nms(boxes, scores, idxs, threshold):
    """Per-class loop of the vectorised NMS (faster here than the coordinate-offset trick, whose
    single NMS over all classes runs one iteration per kept box over all N boxes)."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for c in torch.unique(idxs).tolist():
        members = torch.nonzero(idxs == c).squeeze(1)
        keep[members[torch_nms(boxes[members], scores[members], threshold)]] = True
    kept = torch.nonzero(keep).squeeze(1)
    return kept[scores[kept].argsort(descending=True, stable=True)]


def python_nms(boxes, scores, threshold):
    b = boxes.tolist()
    order = sorted(range(len(b)), key=lambda i: -scores[i].item())
    suppressed = [False] * len(b)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        x1, y1, x2, y2 = b[i]
        area_i = (x2 - x1) * (y2 - y1)
        for j in order[pos + 1:]:
            if suppressed[j]:
                continue
            u1, v1, u2, v2 = b[j]
            inter = max(0.0, min(x2, u2) - max(x1, u1)) * max(0.0, min(y2, v2) - max(y1, v1))
            union = area_i + (u2 - u1) * (v2 - v1) - inter
            if union > 0 and inter / union > threshold:
                suppressed[j] = True
    return torch.tensor(keep)


def torch_focal_loss(logits, targets, gamma, alpha):
    num_classes = logits.shape[1]
    class_range = torch.arange(1, num_classes + 1, dtype=targets.dtype).unsqueeze(0)
    t = targets.unsqueeze(1)
    p = torch.sigmoid(logits)
    term1 = (1 - p) ** gamma * torch.log(p)
    term2 = p**gamma * torch.log(1 - p)
    return -(t == class_range).float() * term1 * alpha - ((t != class_range) * (t >= 0)).float() * term2 * (1 - alpha)


# ----------------------------------------------------------------------------- timing
def median_ms(fn, repeats):
    start = time.perf_counter()
    fn()  # warm-up
    first = (time.perf_counter() - start) * 1e3
    if first > 3000:  # slow references: one run is enough
        return first
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def focal_step(fn, logits, targets):
    def run():
        x = logits.detach().requires_grad_(True)
        fn(x, targets, 2.0, 0.25).sum().backward()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--out", default="output/benchmarks/bench_ops.md", help="where to write the table")
    parser.add_argument("--no-python-5k", action="store_true", help="skip the Python-loop NMS on 5k boxes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = args.repeats
    rows = []

    def add(op, size, ours, ref, ref_name):
        rows.append((op, size, ours, ref, ref_name))
        print(f"{op:22s} {size:18s} ours {ours:10.2f} ms  {ref_name} {ref:10.2f} ms  x{ref / ours:.1f}", flush=True)

    for n in (1000, 5000, 20000):
        boxes, scores = clustered_boxes(n)
        assert nms(boxes, scores, 0.5).tolist() == torch_nms(boxes, scores, 0.5).tolist()
        ours = median_ms(lambda: nms(boxes, scores, 0.5), r)
        add("nms", f"{n // 1000}k boxes", ours, median_ms(lambda: torch_nms(boxes, scores, 0.5), r), "torch vectorised")
        if n == 1000 or (n == 5000 and not args.no_python_5k):
            add("nms", f"{n // 1000}k boxes", ours, median_ms(lambda: python_nms(boxes, scores, 0.5), 1 if n > 1000 else r),
                "python greedy")

    for n in (5000, 20000):
        boxes, scores = clustered_boxes(n, seed=1)
        idxs = torch.randint(80, (n,), generator=torch.Generator().manual_seed(2))
        assert batched_nms(boxes, scores, idxs, 0.5).tolist() == torch_batched_nms(boxes, scores, idxs, 0.5).tolist()
        add("batched_nms (80 cls)", f"{n // 1000}k boxes", median_ms(lambda: batched_nms(boxes, scores, idxs, 0.5), r),
            median_ms(lambda: torch_batched_nms(boxes, scores, idxs, 0.5), r), "torch per-class vectorised")

    for n, m in ((100_000, 100), (200_000, 500)):
        b1, b2 = random_boxes(n, 3), random_boxes(m, 4)
        torch.testing.assert_close(box_iou(b1, b2), torch_box_iou(b1, b2))
        add("box_iou", f"{n // 1000}k x {m}", median_ms(lambda: box_iou(b1, b2), r),
            median_ms(lambda: torch_box_iou(b1, b2), r), "torch broadcasting")

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(100_000, 80, generator=g) * 3
    targets = torch.randint(-1, 81, (100_000,), generator=g)
    add("sigmoid_focal_loss f+b", "100k x 80", median_ms(focal_step(sigmoid_focal_loss, logits, targets), r),
        median_ms(focal_step(torch_focal_loss, logits, targets), r), "torch ops + autograd")

    lines = ["| op | size | ours (ms) | PyTorch equivalent | PyTorch (ms) | speedup |", "|---|---|---:|---|---:|---:|"]
    for op, size, ours, ref, ref_name in rows:
        lines.append(f"| {op} | {size} | {ours:.2f} | {ref_name} | {ref:.2f} | {ref / ours:.1f}x |")
    table = "\n".join(lines)
    print(f"\ntorch {torch.__version__}, threads {torch.get_num_threads()}, median of {r} (python greedy 5k and runs over 3 s: 1 run)\n")
    print(table)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
