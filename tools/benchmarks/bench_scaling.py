#!/usr/bin/env python
"""How a Dynamic ATSS training step and inference scale with image size, GT count and batch (CPU).

    python tools/benchmarks/bench_scaling.py [--config-file configs/dynamic_atss/dynamic_atss_R_18_FPN_small.yaml]
        [--iters 2] [--sizes 320 512 800 1088 1333] [--gts 1 10 100 500] [--batches 1 2 4 8 16]
        [--plot scaling.png] [--threads N]

Three sweeps, each point in a fresh subprocess (random weights, seed 0):
- training step (forward with targets + backward + SGD step) vs the image size: images
  ``s x min(1.5 s, 1333)`` (shorter sides ``--sizes``), both sides rounded up to a multiple of 32
  (so 1333 -> 1344), 10 GTs;
- training step vs the number of random GTs (``--gts``) at ``--gt-size``;
- inference (``torch.inference_mode``) vs the batch size (``--batches``) at ``--batch-size-hw``.

Time: median of ``--iters`` calls after one warm-up call. Peak memory: the increase of the
process's peak resident set during the warm-up call over the resident set before it, after the
model and inputs exist (``utils.metric_logger.peak_rss_increase_mib``). The default model is the
small R-18 config so the whole script runs in a few minutes on 2 cores; pass an R-50 config for
the full model. Prints markdown tables; ``--plot`` writes a PNG with matplotlib (``pip install
matplotlib``), skipped with a message when it is not installed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

DEFAULT_CONFIG = "configs/dynamic_atss/dynamic_atss_R_18_FPN_small.yaml"


def _random_targets(batch: int, h: int, w: int, num_gt: int, num_fg: int, gen: torch.Generator):
    from maskrcnn_benchmark.structures.bounding_box import BoxList

    targets = []
    for _ in range(batch):
        xy = torch.rand(num_gt, 2, generator=gen) * torch.tensor([w * 0.8, h * 0.8])
        wh = 8 + torch.rand(num_gt, 2, generator=gen) * torch.tensor([w * 0.3, h * 0.3])
        t = BoxList(torch.cat([xy, (xy + wh).minimum(torch.tensor([float(w), float(h)]))], 1), (w, h))
        t.add_field("labels", torch.randint(1, num_fg + 1, (num_gt,), generator=gen))
        targets.append(t)
    return targets


def worker(args) -> None:
    """One measurement (subprocess): prints ``{"ms": ..., "peak_mib": ...}``."""
    from maskrcnn_benchmark.modeling.dense_heads import get_num_classes, num_classes_key
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.utils.metric_logger import peak_rss_increase_mib
    from maskrcnn_benchmark.config import setup_cfg

    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHT", ""]
    cfg = setup_cfg(os.path.join(ROOT, args.config_file), opts)
    if get_num_classes(cfg) == 0:  # "from the dataset": 80 COCO classes here
        cfg = setup_cfg(os.path.join(ROOT, args.config_file), opts + [num_classes_key(cfg), 81])
    num_fg = get_num_classes(cfg) - 1
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    gen = torch.Generator().manual_seed(0)
    batch, h, w, num_gt = args.point
    images = torch.randn(batch, 3, h, w, generator=gen)
    if args.mode == "train":
        targets = _random_targets(batch, h, w, num_gt, num_fg, gen)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9)
        model.train()

        def step():
            losses = model(images, targets)
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                model(images)
    peak = peak_rss_increase_mib(step)
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"ms": 1000 * statistics.median(times), "peak_mib": peak}))


def measure(args, mode: str, batch: int, h: int, w: int, num_gt: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--mode", mode, "--point", str(batch), str(h),
           str(w), str(num_gt), "--config-file", args.config_file, "--iters", str(args.iters),
           "--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {mode} batch {batch} {h} x {w} {num_gt} GTs failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def image_hw(short: int) -> tuple:
    """(h, w): shorter side ``short``, long side ``min(1.5 short, 1333)``, both rounded up to a
    multiple of 32."""
    long_side = min(int(round(short * 1.5)), 1333)
    return (short + 31) // 32 * 32, (long_side + 31) // 32 * 32


def table(title: str, key: str, rows) -> str:
    lines = [f"{title}", "", f"| {key} | ms | ms relative to the first | peak MiB |", "|---|---|---|---|"]
    base = rows[0][1]["ms"]
    for label, r in rows:
        lines.append(f"| {label} | {r['ms']:.0f} | {r['ms'] / base:.2f} | {r['peak_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(path: str, sweeps) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot {path}: matplotlib is not installed (pip install matplotlib); no plot written")
        return
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for col, (title, xlabel, xs, rows) in enumerate(sweeps):
        axes[0, col].plot(xs, [r["ms"] for _, r in rows], "o-")
        axes[0, col].set(title=title, ylabel="ms")
        axes[1, col].plot(xs, [r["peak_mib"] for _, r in rows], "o-", color="C1")
        axes[1, col].set(xlabel=xlabel, ylabel="peak MiB (RSS increase)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    print("wrote", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 512, 800, 1088, 1333],
                   help="shorter image sides of the image-size sweep")
    p.add_argument("--gts", type=int, nargs="+", default=[1, 10, 100, 500])
    p.add_argument("--gt-size", type=int, nargs=2, default=(512, 768), metavar=("H", "W"))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--batch-size-hw", type=int, nargs=2, default=(320, 480), metavar=("H", "W"))
    p.add_argument("--plot", default="", help="write a PNG of the three sweeps here")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    p.add_argument("--point", type=int, nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        worker(args)
        return
    print(f"{args.config_file}, torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
          f"{args.iters} after a warm-up, load average {os.getloadavg()[0]:.2f} at start")
    size_rows = []
    for s in args.sizes:
        h, w = image_hw(s)
        size_rows.append((f"{h} x {w} ({h * w / 1e6:.2f} MP)", measure(args, "train", 1, h, w, 10)))
    gh, gw = args.gt_size
    gt_rows = [(str(g), measure(args, "train", 1, gh, gw, g)) for g in args.gts]
    bh, bw = args.batch_size_hw
    batch_rows = [(str(b), measure(args, "infer", b, bh, bw, 0)) for b in args.batches]
    print(table("Training step vs image size (1 image, 10 GTs)", "image (h x w)", size_rows))
    print(table(f"Training step vs GTs (1 image, {gh} x {gw})", "GTs", gt_rows))
    print(table(f"Inference vs batch ({bh} x {bw} images)", "batch", batch_rows))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.plot:
        sizes_mp = [image_hw(s)[0] * image_hw(s)[1] / 1e6 for s in args.sizes]
        plot(args.plot, [("train step vs pixels", "megapixels", sizes_mp, size_rows),
                         ("train step vs GTs", "GTs per image", args.gts, gt_rows),
                         ("inference vs batch", "images per batch", args.batches, batch_rows)])


if __name__ == "__main__":
    main()
