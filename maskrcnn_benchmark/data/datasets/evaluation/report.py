"""Evaluation reports shared by the COCO and VOC evaluators: the result type, the per-class table
and the precision-recall plot (matplotlib, optional: ``pip install matplotlib`` or the ``eval`` extra)."""
from __future__ import annotations

import logging
import math
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from maskrcnn_benchmark.utils.io import atomic_open

__all__ = ["EvaluationResult", "format_table", "plot_pr_curves"]


class EvaluationResult(dict):
    """The summary metrics ``{name: float}`` (a plain dict: compares equal to one), plus
    ``per_class`` ({class name: {metric: float}}) and ``info`` (non-metric details: backend, files)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.per_class: Dict[str, Dict[str, float]] = {}
        self.info: Dict[str, object] = {}


def format_table(per_class: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> str:
    """A fixed-width text table: one row per class, one column per metric (``-`` for undefined, < 0),
    and a last row with the mean over the classes where each metric is defined."""
    width = max([len("class"), len("mean")] + [len(n) for n in per_class])
    lines = [f"{'class':<{width}}  " + "  ".join(f"{c:>7}" for c in columns)]
    for name, row in per_class.items():
        lines.append(f"{name:<{width}}  " + "  ".join(
            f"{row[c]:7.4f}" if row.get(c, -1) >= 0 else f"{'-':>7}" for c in columns))
    means = []
    for c in columns:
        vals = [row[c] for row in per_class.values() if row.get(c, -1) >= 0]
        means.append(f"{sum(vals) / len(vals):7.4f}" if vals else f"{'-':>7}")
    lines.append(f"{'mean':<{width}}  " + "  ".join(means))
    return "\n".join(lines)


def plot_pr_curves(path: str, recall: np.ndarray, curves: Mapping[str, np.ndarray], class_names: Sequence[str],
                   logger: Optional[logging.Logger] = None) -> Optional[str]:
    """Write precision-recall curves to ``path`` (PNG, atomically): one panel per class and an
    "all classes" panel (the mean over the classes where the precision is defined).

    Args:
        recall: Tensor[R] recall points; curves: {label: precision [R, K]} (-1 = undefined), one line
            per label in every panel; class_names: the K names.

    Returns:
        ``path``, or None (logged, naming the package) when matplotlib is not installed.
    """
    logger = logger or logging.getLogger(__name__)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("matplotlib is not installed: skipping %s (pip install matplotlib, or the 'eval' extra)", path)
        return None
    panels = ["all classes"] + list(class_names)
    cols = min(4, len(panels))
    rows = int(math.ceil(len(panels) / cols))
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows))  # no pyplot: no global backend or figure state
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.axis("off")
            continue
        for label, prec in curves.items():
            prec = np.asarray(prec, dtype=np.float64)
            if i == 0:
                valid = prec > -1
                y = np.where(valid.any(1), np.where(valid, prec, 0).sum(1) / np.maximum(valid.sum(1), 1), np.nan)
            else:
                y = np.where(prec[:, i - 1] > -1, prec[:, i - 1], np.nan)
            ax.plot(recall, y, label=label)
        ax.set_title(panels[i], fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    return path
