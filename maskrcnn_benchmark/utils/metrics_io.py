"""``OUTPUT_DIR/metrics.jsonl``: the scalars of a run, one JSON object per line.

Format (UTF-8, each line a JSON object ending in ``\\n``; appended during training):

* every line has ``"iteration"`` (int, the number of finished updates);
* training lines (every SOLVER.LOG_PERIOD iterations) hold ``"lr"`` (the lr of that update),
  ``"time"`` and ``"data_time"`` (seconds per iteration), ``"memory_mb"`` (peak accelerator memory,
  MiB; absent on the CPU), ``"loss"`` (the total) and every loss term by its name (``"loss_cls"``, ...);
* evaluation lines hold ``"dataset"`` (the DATASETS.TEST entry) and its COCO metrics as
  ``"bbox/AP"``, ``"bbox/AP50"``, ``"bbox/AP75"``, ``"bbox/APs"``, ``"bbox/APm"``, ``"bbox/APl"``;
* any other numeric key is a scalar too; a non-finite value is written as ``null``.

:class:`MetricsWriter` appends lines (one ``write`` call per line on a file opened in append
mode, then a flush, so a crash leaves at most a truncated last line); :func:`read_metrics` reads
a file back, skipping a truncated last line with a warning. Only the main process should write.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from typing import Any, Dict, List, Optional, Tuple

from .io import naming_path

__all__ = ["METRICS_FILE", "MetricsWriter", "read_metrics", "metric_series", "scalar_keys", "truncate_metrics"]

METRICS_FILE = "metrics.jsonl"


def _to_json_value(key: str, value: Any):
    if hasattr(value, "item") and callable(value.item):  # torch / numpy scalars
        value = value.item()
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    raise TypeError(f"metrics: value of {key!r} must be a number or a string, got {type(value).__name__}")


class MetricsWriter:
    """Append scalars to a ``metrics.jsonl`` file (see the module docstring for the format).

    Args:
        path: the file, or a folder (then ``folder/metrics.jsonl``); parent folders are created.

    Use as ``writer.write(iteration, lr=..., loss=..., **losses)``; ``close()`` (or a ``with`` block)
    closes the file.
    """

    def __init__(self, path: str):
        if os.path.isdir(path):
            path = os.path.join(path, METRICS_FILE)
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def write(self, iteration: int, /, **scalars: Any) -> Dict[str, Any]:
        """Append one line ``{"iteration": iteration, **scalars}``; returns the written record."""
        if "iteration" in scalars:
            raise ValueError("metrics: pass the iteration as the first argument, not as a keyword")
        record = {"iteration": int(iteration)}
        record.update({str(k): _to_json_value(k, v) for k, v in scalars.items()})
        with naming_path(self.path):  # disk full / file too large: name the file
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
        return record

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str) -> List[Dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (or of ``folder/metrics.jsonl``), in file order.

    A last line that does not parse (a write cut short) is skipped with a warning.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line other than the last is not a JSON object with an integer "iteration"
            (the message gives the file and line number).
    """
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metrics file not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
            if isinstance(record.get("iteration"), bool) or not isinstance(record.get("iteration"), int):
                raise ValueError('no integer "iteration"')
        except ValueError as e:
            if number == len(lines):
                warnings.warn(f"{path}: ignoring the truncated last line {number} ({e})")
                break
            raise ValueError(f"{path}, line {number}: not a metrics record ({e}): {line[:120]!r}") from None
        records.append(record)
    return records


def truncate_metrics(path: str, max_iteration: int) -> int:
    """Drop the records with ``"iteration" > max_iteration`` (and a truncated last line) from a metrics
    file, so a run resumed at ``max_iteration`` appends without doubling its curves. The file is
    rewritten atomically, and only when something is dropped. Returns the number of lines dropped
    (0 when the file does not exist)."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a truncated last line is dropped here, no need to warn
        records = read_metrics(path)
    kept = [r for r in records if r["iteration"] <= max_iteration]
    lines = [line for line in text.split("\n") if line.strip()]
    if len(kept) == len(lines) and (not text or text.endswith("\n")):
        return 0
    from .io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
    return len(lines) - len(kept)


def scalar_keys(records: List[Dict[str, Any]]) -> List[str]:
    """Keys with a numeric value in some record (except "iteration"), in first-seen order."""
    keys: Dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                keys.setdefault(key, None)
    return list(keys)


def metric_series(records: List[Dict[str, Any]], key: str,
                  dataset: Optional[str] = None) -> Tuple[List[int], List[float]]:
    """``(iterations, values)`` of ``key`` over the records that have a number for it (``dataset``: only
    evaluation lines of that dataset)."""
    xs, ys = [], []
    for record in records:
        value = record.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if dataset is not None and record.get("dataset") != dataset:
            continue
        xs.append(int(record["iteration"]))
        ys.append(float(value))
    return xs, ys
