"""Benchmark: the detectors of the toolkit (every registered dense head) trained and evaluated on equal terms.

Workload: each detector's ``*_synthetic.yaml`` config (same ResNet-18-FPN backbone, synthetic
shapes dataset, input sizes, evaluation; only the head keys differ) trained on the CPU with
``tools/train_net.py`` in its own subprocess and ``OUTPUT_DIR`` (``<output-dir>/<detector>``),
under one shared schedule: the configs' own, or the one given here (``--max-iter``, ``--lr``,
``--ims-per-batch``; steps at 2/3 and 8/9 of ``--max-iter`` unless ``--steps``). The final model
is evaluated on ``DATASETS.TEST``; the script reads ``OUTPUT_DIR/inference/<dataset>/metrics.json``
and prints a markdown table: COCO AP / AP50 / AP75, training time (wall time of the run minus the
evaluation's inference time) and the wall time of the whole run.

    python tools/benchmarks/compare_detectors.py [--max-iter 1500] [--detectors atss fcos ...]
        [--output-dir /tmp/compare_detectors] [--threads 2] [-- KEY VALUE ...]

Anything after ``--`` is passed to every run as config overrides. An existing ``OUTPUT_DIR``
is removed first unless ``--resume`` (train_net resumes from a checkpoint in it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]

# display names of the heads (MODEL.HEAD) that have one; other heads are listed by MODEL.HEAD
DISPLAY = {"ATSS": "ATSS", "DYNAMIC_ATSS": "Dynamic ATSS", "AUTOASSIGN": "AutoAssign",
           "FREEANCHOR": "FreeAnchor", "RETINANET": "RetinaNet", "FCOS": "FCOS"}


def discover_detectors() -> Dict[str, str]:
    """Detector name -> its ``configs/*/*_R_18_FPN_synthetic.yaml`` (relative to the repository
    root), one per head named by the file's ``MODEL.HEAD``; the heads of ``DISPLAY`` first."""
    import yaml

    found = {}
    for path in sorted((ROOT / "configs").glob("*/*_R_18_FPN_synthetic.yaml")):
        head = (yaml.safe_load(path.read_text()).get("MODEL") or {}).get("HEAD", "")
        found[head] = path.relative_to(ROOT).as_posix()
    order = [h for h in DISPLAY if h in found] + sorted(h for h in found if h not in DISPLAY)
    return {DISPLAY.get(h, h): found[h] for h in order}


# detector -> synthetic config (relative to the repository root)
DETECTORS: Dict[str, str] = discover_detectors()


def slug(name: str) -> str:
    """"Dynamic ATSS" -> "dynamic_atss" (output folder names)."""
    return name.lower().replace(" ", "_")


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def schedule_overrides(max_iter: Optional[int], steps: Optional[List[int]], lr: Optional[float],
                       ims_per_batch: Optional[int]) -> List[str]:
    """``KEY VALUE`` overrides of the shared schedule (empty: the configs' own)."""
    opts: List[str] = []
    if max_iter is not None:
        if steps is None:  # 2/3 and 8/9 of the schedule, strictly increasing, below max_iter
            first = max(1, max_iter * 2 // 3)
            steps = [s for s in (first, max(first + 1, max_iter * 8 // 9)) if s < max_iter] or [first]
        warmup = min(max_iter // 10, 100)
        opts += ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.WARMUP_ITERS", str(warmup),
                 "SOLVER.CHECKPOINT_PERIOD", str(max_iter)]
    if steps is not None:
        opts += ["SOLVER.STEPS", "(" + ",".join(str(s) for s in steps) + ",)"]
    if lr is not None:
        opts += ["SOLVER.BASE_LR", str(lr)]
    if ims_per_batch is not None:
        opts += ["SOLVER.IMS_PER_BATCH", str(ims_per_batch)]
    return opts


def read_metrics(output_dir: Path) -> Optional[dict]:
    """The first ``inference/<dataset>/metrics.json`` under ``output_dir`` (None if missing)."""
    files = sorted((output_dir / "inference").glob("*/metrics.json"))
    if not files:
        return None
    with open(files[0], encoding="utf-8") as f:
        return json.load(f)


def run_detector(name: str, config: Path, output_dir: Path, opts: List[str], threads: int,
                 resume: bool) -> dict:
    """Trains and evaluates one detector; returns its table row."""
    if output_dir.exists() and not resume:
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", str(config),
           "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(output_dir)] + opts
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(output_dir / "stdout.txt", "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    row = {"detector": name, "wall_s": wall, "returncode": proc.returncode}
    metrics = read_metrics(output_dir)
    if proc.returncode != 0 or metrics is None:
        row["error"] = f"failed (exit {proc.returncode}); see {output_dir / 'stdout.txt'}"
        return row
    row.update({k: metrics["bbox"].get(k) for k in ("AP", "AP50", "AP75")})
    row["train_s"] = wall - float(metrics.get("inference_time_s", 0.0))
    return row


def markdown_table(rows: List[dict]) -> str:
    lines = ["| detector | AP | AP50 | AP75 | training time (s) | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['detector']} | - | - | - | - | {r['wall_s']:.0f} ({r['error']}) |")
            continue
        ap = [f"{100 * r[k]:.1f}" if r[k] is not None and r[k] >= 0 else "-" for k in ("AP", "AP50", "AP75")]
        lines.append(f"| {r['detector']} | {' | '.join(ap)} | {r['train_s']:.0f} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> List[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS),
                        help=f"subset of {list(DETECTORS)} (case, spaces and _ ignored)")
    parser.add_argument("--max-iter", type=int, default=None, help="shared SOLVER.MAX_ITER")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="shared SOLVER.STEPS")
    parser.add_argument("--lr", type=float, default=None, help="shared SOLVER.BASE_LR")
    parser.add_argument("--ims-per-batch", type=int, default=None, help="shared SOLVER.IMS_PER_BATCH")
    parser.add_argument("--output-dir", default="/tmp/compare_detectors")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--resume", action="store_true", help="keep existing output folders")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)

    by_key = {_key(k): k for k in DETECTORS}
    names = []
    for d in args.detectors:
        if _key(d) not in by_key:
            parser.error(f"unknown detector {d!r}; choose from {list(DETECTORS)}")
        names.append(by_key[_key(d)])
    opts = schedule_overrides(args.max_iter, args.steps, args.lr, args.ims_per_batch) + overrides
    rows = []
    for name in names:
        config = ROOT / DETECTORS[name]
        if not config.exists():
            rows.append({"detector": name, "wall_s": 0.0, "error": f"missing config {DETECTORS[name]}"})
            continue
        rows.append(run_detector(name, config, Path(args.output_dir) / slug(name), opts,
                                 args.threads, args.resume))
    table = markdown_table(rows)
    print()
    print(f"Schedule overrides: {' '.join(opts) if opts else '(the configs own)'}")
    print(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
