"""tools/compare_mmdet.py needs mmdetection (never in CI): without it, it says what to install."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_compare_mmdet_without_mmdetection_says_what_to_install():
    if importlib.util.find_spec("mmdet") is not None:
        pytest.skip("mmdetection is installed here")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_mmdet.py"), "--model", "atss"],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert proc.returncode != 0 and "pip install mmdet" in proc.stderr
