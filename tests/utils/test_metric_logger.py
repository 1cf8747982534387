"""SmoothedValue / MetricLogger statistics, the terminal progress bar and the log file."""
import io
import logging

import pytest
import torch

from maskrcnn_benchmark.utils.logger import setup_logger
from maskrcnn_benchmark.utils.metric_logger import (MetricLogger, ProgressBar, SmoothedValue, format_eta,
                                                    memory_usage_mb)


def test_smoothed_value_window_and_global():
    v = SmoothedValue(window_size=3)
    for x in [1.0, 10.0, 2.0, 3.0]:
        v.update(x)
    assert v.median == 3.0  # window [10, 2, 3]
    assert v.avg == pytest.approx(5.0)
    assert v.global_avg == pytest.approx(4.0)
    assert v.latest == 3.0


def test_metric_logger_str_and_attr():
    m = MetricLogger(delimiter="|")
    m.update(loss=torch.tensor(2.0), lr=0.5)
    m.update(loss=4.0, lr=0.5)
    assert m.loss.global_avg == 3.0
    # median of an even window is the lower middle value (torch.median), as in maskrcnn-benchmark
    assert str(m) == "loss: 2.0000 (3.0000)|lr: 0.5000 (0.5000)"
    with pytest.raises(AttributeError):
        m.missing
    with pytest.raises(TypeError):
        m.update(loss="x")


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_terminal():
    plain = io.StringIO()
    bar = ProgressBar(10, stream=plain)
    bar.update(5, "loss 1")
    bar.close()
    assert plain.getvalue() == ""

    tty = _Tty()
    bar = ProgressBar(10, stream=tty, width=10)
    bar.update(5, "loss 1")
    assert "\r" in tty.getvalue() and "[#####.....] 5/10" in tty.getvalue() and "\n" not in tty.getvalue()
    bar.close()
    assert tty.getvalue().endswith("\n")


def test_memory_and_eta_format():
    assert memory_usage_mb(torch.device("cpu")).startswith("rss: ")
    assert format_eta(3725) == "1:02:05"


def test_logger_writes_file_on_rank0_only(tmp_path):
    stream = io.StringIO()
    logger = setup_logger("mb_test_logger", str(tmp_path / "a"), 0, stream=stream)
    logger.info("hello")
    logger = setup_logger("mb_test_logger", str(tmp_path / "a"), 0, stream=stream)  # no duplicate handlers
    logger.info("again")
    for h in logger.handlers:
        h.flush()
    text = (tmp_path / "a" / "log.txt").read_text()
    assert text.count("hello") == 1 and text.count("again") == 1
    assert stream.getvalue().count("again") == 1

    other = setup_logger("mb_test_logger_r1", str(tmp_path / "b"), 1)
    other.info("silent")
    assert not (tmp_path / "b" / "log.txt").exists()
    for h in logging.getLogger("mb_test_logger").handlers:
        h.close()


def test_peak_rss_increase_sees_a_temporary_allocation():
    # in a fresh process, as the benchmarks use it (a long-lived process may serve the allocation
    # from memory it already holds, which is then rightly not counted)
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from maskrcnn_benchmark.utils.metric_logger import peak_rss_increase_mib as f\n"
        "torch.ones(160 * 2 ** 20, dtype=torch.uint8)\n"  # an earlier, larger peak (freed) must not hide
        "print(f(lambda: torch.ones(64 * 2 ** 20, dtype=torch.uint8)), f(lambda: None))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    peak, idle = (float(v) for v in out.split())
    assert 48 <= peak <= 160, peak  # 64 MiB touched
    assert idle < 8, idle
