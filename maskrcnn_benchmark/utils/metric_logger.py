"""Smoothed training metrics, resource usage and a one-line terminal progress bar."""
from __future__ import annotations

import datetime
import os
import sys
from collections import defaultdict, deque
from typing import Dict, Optional

import torch


class SmoothedValue:
    """Track a series of values: median / average over a sliding window and the global average."""

    def __init__(self, window_size: int = 20):
        self.deque: deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0

    def update(self, value: float) -> None:
        self.deque.append(float(value))
        self.count += 1
        self.total += float(value)

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.deque), dtype=torch.float64).median().item()) if self.deque else 0.0

    @property
    def avg(self) -> float:
        return sum(self.deque) / len(self.deque) if self.deque else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def latest(self) -> float:
        return self.deque[-1] if self.deque else 0.0


class MetricLogger:
    """A set of named :class:`SmoothedValue`; ``str()`` gives ``"name: median (global_avg)"`` pairs."""

    def __init__(self, delimiter: str = "  ", window_size: int = 20):
        self.meters: Dict[str, SmoothedValue] = defaultdict(lambda: SmoothedValue(window_size))
        self.delimiter = delimiter

    def update(self, **kwargs) -> None:
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            if not isinstance(v, (float, int)):
                raise TypeError(f"MetricLogger.update: {k} must be a number, got {type(v).__name__}")
            self.meters[k].update(v)

    def __getattr__(self, attr: str) -> SmoothedValue:
        meters = self.__dict__.get("meters")
        if meters is not None and attr in meters:
            return meters[attr]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{attr}'")

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {m.median:.4f} ({m.global_avg:.4f})" for name, m in self.meters.items())


def memory_usage_mb(device: torch.device) -> str:
    """``"max mem: X MB"`` (CUDA max allocated) on GPU, ``"rss: X MB"`` (resident set size) on CPU."""
    if device.type == "cuda" and torch.cuda.is_available():
        return f"max mem: {torch.cuda.max_memory_allocated(device) / 1024 ** 2:.0f} MB"
    return f"rss: {current_rss_bytes() / 1024 ** 2:.0f} MB"


def current_rss_bytes() -> int:
    """Resident set size of this process in bytes (/proc on Linux, peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class ProgressBar:
    """A one-line ``\\r`` progress bar, drawn only when ``stream`` is a terminal.

    Call :meth:`clear` before printing a normal log line so the two do not mix.
    """

    def __init__(self, total: int, stream=None, width: int = 30, enabled: Optional[bool] = None):
        self.total = max(int(total), 1)
        self.stream = stream if stream is not None else sys.stdout
        self.width = width
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self._drawn = False

    def update(self, current: int, suffix: str = "") -> None:
        if not self.enabled:
            return
        frac = min(max(current / self.total, 0.0), 1.0)
        filled = int(round(self.width * frac))
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r\033[K[{bar}] {current}/{self.total} {100 * frac:5.1f}% {suffix}")
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def peak_rss_increase_mib(fn) -> float:
    """Runs ``fn()`` and returns by how much it raised the process's peak resident set, in MiB.

    On Linux the peak is first reset to the current RSS (``/proc/self/clear_refs`` "5"), so an
    earlier, higher peak (library loading, model building) does not hide the call's own; the
    result is ``VmHWM`` after the call minus ``VmRSS`` before it. Elsewhere (or if the reset is not
    permitted) it is the increase of ``ru_maxrss``, which is 0 when an earlier peak was higher.
    """
    def status_kib(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status_kib("VmRSS")
        fn()
        return max(status_kib("VmHWM") - before, 0) / 1024.0
    except (OSError, KeyError, ValueError):
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / scale
