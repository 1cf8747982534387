#!/usr/bin/env python
"""Interleaved A/B of training-step variants of one detector config, in one process (CPU).

    python tools/benchmarks/bench_train_ab.py --config-file configs/retinanet/retinanet_R_50_FPN_1x.yaml \
        --size 512 768 --variant default: --variant cl:MODEL.CHANNELS_LAST=True \
        --variant cl_bf16:MODEL.CHANNELS_LAST=True,amp=bf16 [--rounds 11] [--warmup 3] [--batch 1]

Two checkouts, interleaved (e.g. main against a branch; each variant runs in its own worker process
that imports the package from ``repo=PATH``, the step is timed inside the worker)::

    python tools/benchmarks/bench_train_ab.py --config-file configs/dynamic_atss/dynamic_atss_R_18_FPN_synthetic.yaml \
        --size 512 768 --batch 2 --variant main:repo=/work/main --variant branch:repo=/work/wt/syncfree-train

A variant is ``NAME:ITEM,ITEM,...`` where an item is a config override ``KEY=VALUE`` (YAML-parsed
value), ``repo=PATH`` (the repository root whose ``maskrcnn_benchmark`` the variant imports, in a
worker process; keys the other checkout lacks are the user's business), ``amp=bf16`` (the step's forward under ``torch.autocast("cpu", bfloat16)``, what
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
import subprocess
import sys
import time
from typing import Callable, Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# a worker (``--repo-root PATH``) imports the package of that checkout
_REPO = sys.argv[sys.argv.index("--repo-root") + 1] if "--repo-root" in sys.argv else ROOT
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import torch  # noqa: E402
import yaml  # noqa: E402

from maskrcnn_benchmark.config import add_config_args, setup_cfg  # noqa: E402
from maskrcnn_benchmark.layers import batch_norm  # noqa: E402
from maskrcnn_benchmark.modeling.backbone import resnet  # noqa: E402
from maskrcnn_benchmark.modeling.detector import build_detection_model  # noqa: E402
from tools.benchmarks.bench_model import random_target  # noqa: E402


# labels of the random boxes: 1..NUM_FG, valid for every shipped config (the synthetic ones have 6 classes)
NUM_FG = 6


def split_repo(text: str) -> Tuple[str, str]:
    """"NAME:repo=PATH,ITEM,..." -> ("NAME:ITEM,...", PATH) ("" without a ``repo=`` item)."""
    name, sep, rest = text.partition(":")
    items = [s.strip() for s in rest.split(",") if s.strip()]
    repos = [i[5:] for i in items if i.startswith("repo=")]
    if len(repos) > 1:
        raise ValueError(f"--variant {text!r}: more than one repo= item")
    return name + sep + ",".join(i for i in items if not i.startswith("repo=")), (repos[0] if repos else "")


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
    # SOLVER.AMP tells the builder that the step runs under autocast (MODEL.CHANNELS_LAST / WINOGRAD "auto": off)
    cfg = setup_cfg(config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHT", ""] + base_opts + opts
                    + (["SOLVER.AMP", amp] if amp else []))
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


def worker_step(args, variant_text: str, repo: str) -> Callable[[], float]:
    """A variant in a worker process importing ``repo``: returns a step that runs one timed step
    there and returns its seconds (``step.close()`` ends the worker)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--repo-root", os.path.abspath(repo), "--worker",
           "--config-file", args.config_file, "--size", str(args.size[0]), str(args.size[1]),
           "--batch", str(args.batch), "--threads", str(args.threads), "--variant", variant_text, *args.opts]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def reply() -> str:
        for line in proc.stdout:
            if line.startswith("BENCH "):
                return line[6:].strip()
        raise RuntimeError(f"worker for {variant_text!r} ({repo}) exited with status {proc.wait()}")

    if reply() != "ready":
        raise RuntimeError(f"worker for {variant_text!r} did not start")

    def step() -> float:
        proc.stdin.write("step\n")
        return float(reply())

    def close() -> None:
        proc.stdin.close()
        proc.wait(timeout=60)
    step.close = close
    return step


def run_worker(args) -> None:
    """``--worker``: build the one variant, then time one step per ``step`` line on stdin."""
    variant = parse_variant(args.variant[0])
    step = make_step(args.config_file, list(args.opts), variant, args.batch, tuple(args.size))
    import maskrcnn_benchmark
    print(f"worker {variant[0]}: {os.path.dirname(maskrcnn_benchmark.__file__)}", file=sys.stderr, flush=True)
    print("BENCH ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0 = time.perf_counter()
        step()
        print(f"BENCH {time.perf_counter() - t0:.6f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(p, default="configs/retinanet/retinanet_R_50_FPN_1x.yaml")
    p.add_argument("--size", type=int, nargs=2, default=(512, 768), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--variant", action="append", default=[], help="NAME:ITEM,ITEM,... (repeat; see the docstring)")
    p.add_argument("--rounds", type=int, default=11, help="timed rounds")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--repo-root", default="", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every variant")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        run_worker(args)
        return
    try:
        split = [split_repo(v) for v in (args.variant or ["default:"])]
        variants = [parse_variant(text) for text, _ in split]
    except ValueError as e:
        p.error(str(e))
    steps: Dict[str, Callable[[], float]] = {}
    for v, (text, repo) in zip(variants, split):
        if repo:
            steps[v[0]] = worker_step(args, text, repo)
        else:
            local = make_step(args.config_file, list(args.opts), v, args.batch, tuple(args.size))

            def timed(local=local) -> float:
                t0 = time.perf_counter()
                local()
                return time.perf_counter() - t0
            steps[v[0]] = timed
    times: Dict[str, List[float]] = {name: [] for name in steps}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.config_file}, batch {args.batch} x "
          f"{args.size[0]} x {args.size[1]}, {args.rounds} interleaved rounds after {args.warmup} warm-up, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    for rnd in range(args.warmup + args.rounds):
        for name, step in steps.items():
            elapsed = step()
            if rnd >= args.warmup:
                times[name].append(elapsed)
    first = statistics.median(times[variants[0][0]])
    print("| variant | train step ms (median) | min | max | speed vs " + variants[0][0] + " |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {1000 * med:.0f} | {1000 * min(ts):.0f} | {1000 * max(ts):.0f} | {first / med:.2f}x |")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    for step in steps.values():
        getattr(step, "close", lambda: None)()


if __name__ == "__main__":
    main()
