#!/usr/bin/env python
"""Plot training curves (losses, lr, AP against iterations) of one or more runs into one PNG.

    python tools/plot_curves.py OUTPUT_DIR [OUTPUT_DIR ...] --output curves.png [--keys loss lr bbox/AP]

Reads each ``OUTPUT_DIR/metrics.jsonl`` (or a ``.jsonl`` file given directly; format in
``maskrcnn_benchmark/utils/metrics_io.py`` and README "Workflow"). One panel per key: by default
every loss term, ``lr`` and ``bbox/AP``; each run is one line in every panel. Needs matplotlib
(``pip install matplotlib``, or the ``plot`` extra: ``pip install -e .[plot]``).
"""
from __future__ import annotations

import argparse
import io
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maskrcnn_benchmark.utils.io import atomic_write_bytes  # noqa: E402
from maskrcnn_benchmark.utils.metrics_io import metric_series, read_metrics, scalar_keys  # noqa: E402

Curves = Dict[str, Dict[str, Tuple[List[int], List[float]]]]


def run_labels(paths: Sequence[str]) -> List[str]:
    """Short, distinct labels for runs: the folder names, or the full paths when two names collide."""
    names = [os.path.basename(os.path.normpath(p[:-len("metrics.jsonl")] if p.endswith("metrics.jsonl") else p))
             for p in paths]
    return names if len(set(names)) == len(names) else [os.path.normpath(p) for p in paths]


def default_keys(records_per_run: Sequence[List[dict]]) -> List[str]:
    """Every loss key (``loss`` first), then ``lr``, then ``bbox/AP``, among the keys present in some run."""
    present: Dict[str, None] = {}
    for records in records_per_run:
        for key in scalar_keys(records):
            present.setdefault(key, None)
    losses = sorted((k for k in present if k.startswith("loss")), key=lambda k: (k != "loss", k))
    return losses + [k for k in ("lr", "bbox/AP") if k in present]


def collect_curves(paths: Sequence[str], keys: Optional[Sequence[str]] = None) -> Curves:
    """``{key: {run label: (iterations, values)}}`` for the runs at ``paths`` (runs lacking a key are left
    out of its panel)."""
    records_per_run = [read_metrics(p) for p in paths]
    keys = list(keys) if keys else default_keys(records_per_run)
    curves: Curves = {}
    for key in keys:
        panel = {}
        for label, records in zip(run_labels(paths), records_per_run):
            xs, ys = metric_series(records, key)
            if xs:
                panel[label] = (xs, ys)
        curves[key] = panel
    return curves


def _import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plot_curves.py needs matplotlib: pip install matplotlib "
                         "(or the project's extra: pip install -e .[plot])") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves: Curves, output: str, title: str = "") -> str:
    """Draw one panel per key (x: iteration, one line per run) and write the PNG atomically to ``output``."""
    plt = _import_pyplot()
    if not curves:
        raise ValueError("nothing to plot: no keys")
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (key, panel) in zip(axes.flat, curves.items()):
        for label, (xs, ys) in panel.items():
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=label)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        if key.startswith("loss") and panel and all(y > 0 for _, ys in panel.values() for y in ys):
            ax.set_yscale("log")
        if not panel:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        elif len(panel) > 1 or key == next(iter(curves)):
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(output, buf.getvalue())
    return output


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(description="Plot losses, lr and AP of runs from their metrics.jsonl")
    parser.add_argument("runs", nargs="+", metavar="OUTPUT_DIR", help="run folders (or metrics.jsonl files)")
    parser.add_argument("--output", default="curves.png", help="PNG to write (default: curves.png)")
    parser.add_argument("--keys", nargs="+", default=None,
                        help="keys to plot, one panel each (default: every loss, lr, bbox/AP)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not os.path.exists(run):
            parser.error(f"run folder or metrics file not found: {run}")
    _import_pyplot()  # fail early with the install hint
    try:
        curves = collect_curves(args.runs, args.keys)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    if not any(curves.values()):
        parser.error(f"no values for {list(curves) or 'any key'} in {args.runs}")
    path = plot_curves(curves, args.output, args.title)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    run_tool(main)
