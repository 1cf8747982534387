#!/usr/bin/env python
"""Images per CPU-second of the training DataLoader (decode, resize, flip, to tensor, collate), CPU.

    python tools/benchmarks/bench_loader.py [--repo /tmp/loader_base] [--repeats 3] [--batches 40]
        [--warmup 4] [--batch 16] [--workers 2] [--min-size 800] [--max-size 1333] [--images 128]
        [--image-size 640] [--dir /tmp/bench_loader]

Data: ``--images`` synthetic JPEGs at about COCO's size (sides drawn from [0.75, 1] x
``--image-size``, the project's synthetic COCO generator, written once into ``--dir``). The loader
is ``make_data_loader(cfg, is_train=True)`` with ``INPUT.MIN_SIZE_TRAIN --min-size``,
``MAX_SIZE_TRAIN --max-size``, ``SOLVER.IMS_PER_BATCH --batch``, ``DATALOADER.NUM_WORKERS
--workers``, on the CPU (no pinning).

Each run is a fresh worker process that imports ``maskrcnn_benchmark`` from one checkout: this
one ("new") and, with ``--repo PATH``, another ("base", e.g. ``git worktree add /tmp/loader_base
main``). The two alternate, ``--repeats`` times each, so a drift of the machine affects both.
A run takes ``--warmup`` batches, waits until the loader workers are idle (their prefetched
batches done), then times the remaining batches: CPU seconds of the main process
(``time.process_time``) plus those of every loader worker (``utime + stime`` of
``/proc/<pid>/stat``, read while they are alive), and the wall time. Images per CPU-second =
timed images / CPU seconds. Only the loader is measured: a checkout whose model normalises the
batch (uint8 input) does that on the model's device; the column "model normalise ms/img" is that
cost on this CPU (the model's ``PixelNormalizer`` on a timed batch, main process; 0 for a
checkout whose loader normalises), and "img/CPU-s incl. normalise" adds it, for CPU training.

Check: every run also writes the model's input for the first batch (the batch itself when it is
float, i.e. normalised by the loader; the model's normalisation of it when it is uint8), its
image sizes, indices and boxes; the script compares every run's with the first run's and exits 1
when they differ (``torch.equal``, so bit for bit).

Prints a markdown table (median over repeats). Run it on an idle machine; numbers from a loaded
one are not comparable.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _workers_cpu(pids: List[int]) -> float:
    return sum(_proc_cpu_seconds(p) for p in pids)


def _wait_idle(pids: List[int], quiet_s: float = 0.3, timeout_s: float = 120.0) -> None:
    """Return once the workers' CPU time has not grown for ``quiet_s``."""
    last, since, start = _workers_cpu(pids), time.perf_counter(), time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        time.sleep(0.05)
        now = _workers_cpu(pids)
        if now != last:
            last, since = now, time.perf_counter()
        elif time.perf_counter() - since >= quiet_s:
            return


def _model_input(images, cfg):
    """(what the checkout's model feeds its backbone, model-side normalise seconds): a uint8 batch
    through the model's normaliser, a float batch as it is."""
    import torch

    x = images.tensors
    if x.dtype != torch.uint8:
        return x, 0.0
    from maskrcnn_benchmark.layers.pixel_norm import PixelNormalizer

    norm = PixelNormalizer(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, cfg.INPUT.TO_BGR255)
    start = time.perf_counter()
    out = norm(x, images.image_sizes)
    return out, time.perf_counter() - start


def worker(args) -> Dict[str, float]:
    """One run in this process (imports the package of ``args.repo_root``)."""
    sys.path.insert(0, args.repo_root)
    import torch

    import maskrcnn_benchmark
    from maskrcnn_benchmark.config import cfg as base_cfg
    from maskrcnn_benchmark.data import make_data_loader

    where = os.path.dirname(os.path.dirname(os.path.abspath(maskrcnn_benchmark.__file__)))
    if os.path.realpath(where) != os.path.realpath(args.repo_root):
        raise RuntimeError(f"imported maskrcnn_benchmark from {where}, wanted {args.repo_root}")
    torch.set_num_threads(1)
    cfg = base_cfg.clone()
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", (f"{args.ann_file}:{args.image_root}",),
        "INPUT.MIN_SIZE_TRAIN", (args.min_size,), "INPUT.MAX_SIZE_TRAIN", args.max_size,
        "SOLVER.IMS_PER_BATCH", args.batch, "SOLVER.MAX_ITER", args.warmup + args.batches,
        "DATALOADER.NUM_WORKERS", args.workers, "SEED", 0,
    ])
    loader = make_data_loader(cfg, is_train=True)
    it = iter(loader)
    pids = [w.pid for w in getattr(it, "_workers", [])]
    norm_s = []
    for i in range(args.warmup):
        images, targets, indices = next(it)
        if i == 0:
            x, _ = _model_input(images, cfg)
            torch.save({"input": x, "sizes": images.image_sizes, "indices": list(indices),
                        "boxes": [t.bbox for t in targets]}, args.check_file)
    outstanding = min(args.batches, args.workers * (getattr(loader, "prefetch_factor", None) or 2)) \
        if args.workers > 0 else 0
    _wait_idle(pids)
    cpu0, workers0, wall0 = time.process_time(), _workers_cpu(pids), time.perf_counter()
    timed = 0
    for n in range(args.batches):  # exactly the batches left: the workers stay alive to be read
        images, _, _ = next(it)
        if n >= outstanding:  # made after the clock started
            timed += images.tensors.shape[0]
    wall = time.perf_counter() - wall0
    workers_cpu = _workers_cpu(pids) - workers0 if pids else 0.0
    if timed == 0:
        raise ValueError(f"--batches {args.batches} leaves no batch made after the clock started "
                         f"({outstanding} were prefetched): use more batches")
    cpu = time.process_time() - cpu0
    for _ in range(3):  # the model-side normalisation of one batch (main process, this CPU)
        norm_s.append(_model_input(images, cfg)[1])
    norm_per_img = min(norm_s) / images.tensors.shape[0]
    total = cpu + workers_cpu
    return {"images": timed, "wall_s": wall, "main_cpu_s": cpu, "workers_cpu_s": workers_cpu,
            "img_per_cpu_s": timed / total, "img_per_s": timed / wall,
            "norm_ms_per_img": 1000 * norm_per_img,
            "img_per_cpu_s_incl_norm": timed / (total + timed * norm_per_img),
            "dtype": str(images.tensors.dtype)}


def _data(args):
    sys.path.insert(0, ROOT)
    from maskrcnn_benchmark.data.synthetic import ensure_synthetic_coco

    out = os.path.join(args.dir, f"coco_{args.images}_{args.image_size}")
    paths = ensure_synthetic_coco(out, num_train=args.images, num_val=1, seed=0,
                                  image_size=args.image_size, min_side_frac=0.75, max_objects=8)
    return paths["train"]["ann_file"], paths["train"]["root"]


def _compare(first: str, other: str) -> List[str]:
    import torch

    a, b = torch.load(first, weights_only=False), torch.load(other, weights_only=False)
    bad = [k for k in ("sizes", "indices") if a[k] != b[k]]
    if a["input"].shape != b["input"].shape or a["input"].dtype != b["input"].dtype \
            or not torch.equal(a["input"], b["input"]):
        bad.append("input")
    if len(a["boxes"]) != len(b["boxes"]) or not all(torch.equal(x, y) for x, y in zip(a["boxes"], b["boxes"])):
        bad.append("boxes")
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default="", help="baseline checkout (its maskrcnn_benchmark is imported)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=40, help="timed batches per run")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--min-size", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--image-size", type=int, default=640, help="longer side of the JPEGs (COCO: 640)")
    p.add_argument("--dir", default="/tmp/bench_loader")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--repo-root", default=ROOT, help=argparse.SUPPRESS)
    p.add_argument("--ann-file", default="", help=argparse.SUPPRESS)
    p.add_argument("--image-root", default="", help=argparse.SUPPRESS)
    p.add_argument("--check-file", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1 or args.batches < 1:
        p.error("--warmup and --batches must be >= 1")
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0

    ann_file, image_root = _data(args)
    variants = ([("base", os.path.abspath(args.repo))] if args.repo else []) + [("new", ROOT)]
    results: Dict[str, List[dict]] = {name: [] for name, _ in variants}
    checks, mismatches = [], []
    for r in range(args.repeats):
        for name, repo in variants:
            check = os.path.join(args.dir, f"check_{name}_{r}.pt")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--repo-root", repo,
                   "--ann-file", ann_file, "--image-root", image_root, "--check-file", check]
            for k in ("batches", "warmup", "batch", "workers", "min_size", "max_size"):
                cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
                raise SystemExit(f"{name} run {r} ({repo}) failed")
            res = json.loads(line[0][len("RESULT "):])
            results[name].append(res)
            print(f"run {r} {name}: {res['img_per_cpu_s']:.1f} img/CPU-s, {res['img_per_s']:.1f} img/s "
                  f"({res['dtype']} batches)", flush=True)
            if checks:
                bad = _compare(checks[0], check)
                if bad:
                    mismatches.append(f"{name} run {r}: {bad}")
            checks.append(check)

    print(f"\n{args.images} JPEGs ~{args.image_size} px, INPUT {args.min_size} x {args.max_size}, "
          f"batch {args.batch}, {args.workers} workers, {args.batches} timed batches, "
          f"median of {args.repeats}\n")
    print("| checkout | batch dtype | img/CPU-s | img/s (wall) | main CPU s | workers CPU s "
          "| model normalise ms/img | img/CPU-s incl. normalise |")
    print("|---|---|---|---|---|---|---|---|")
    med = {}
    for name, _ in variants:
        rs = results[name]
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "dtype"}
        med[name] = m
        print(f"| {name} | {rs[0]['dtype']} | {m['img_per_cpu_s']:.1f} | {m['img_per_s']:.1f} | "
              f"{m['main_cpu_s']:.2f} | {m['workers_cpu_s']:.2f} | {m['norm_ms_per_img']:.2f} | "
              f"{m['img_per_cpu_s_incl_norm']:.1f} |")
    if "base" in med:
        print(f"\nnew / base: {med['new']['img_per_cpu_s'] / med['base']['img_per_cpu_s']:.2f}x img/CPU-s, "
              f"{med['new']['img_per_cpu_s_incl_norm'] / med['base']['img_per_cpu_s_incl_norm']:.2f}x "
              f"incl. the model-side normalise on this CPU")
    if mismatches:
        print("\nMODEL INPUT DIFFERS from the first run's: " + "; ".join(mismatches))
        return 1
    print(f"\nmodel input of the first batch identical (bit for bit) across all {len(checks)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
