"""tools/benchmarks/bench_scaling.py: the sweep's image sizes and one real measurement subprocess."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "benchmarks" / "bench_scaling.py"
_SPEC = importlib.util.spec_from_file_location("bench_scaling", SCRIPT)
bench_scaling = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_scaling)


@pytest.mark.parametrize("short,expected", [(320, (320, 480)), (800, (800, 1216)), (1333, (1344, 1344)),
                                            (100, (128, 160))])
def test_image_hw_long_side_capped_and_rounded_to_32(short, expected):
    h, w = bench_scaling.image_hw(short)
    assert (h, w) == expected
    # by the rule: shorter side, then min(1.5 x, 1333), each rounded up to a multiple of 32
    assert h % 32 == 0 and w % 32 == 0 and h >= short and w >= min(1.5 * short, 1333)


def test_table_relative_column():
    rows = [("a", {"ms": 10.0, "peak_mib": 1.0}), ("b", {"ms": 25.0, "peak_mib": 3.0})]
    lines = bench_scaling.table("T", "k", rows).splitlines()
    assert lines[-1] == "| b | 25 | 2.50 | 3 |" and lines[-2] == "| a | 10 | 1.00 | 1 |"


def test_worker_measures_a_tiny_training_step():
    out = subprocess.run([sys.executable, str(SCRIPT), "--worker", "--mode", "train", "--point", "1", "64", "96",
                          "3", "--iters", "1", "--threads", "1"], capture_output=True, text=True, check=True,
                         cwd=SCRIPT.parents[2]).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ms"] > 0 and result["peak_mib"] >= 0
