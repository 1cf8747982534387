"""Root conftest: make the checkout importable (tests run against the in-place build)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
HERE = os.path.dirname(os.path.abspath(__file__))  # test helpers (dist_helpers.py)
if HERE not in sys.path:
    sys.path.append(HERE)

import pytest  # noqa: E402

# Tests that compare numbers bit for bit or against stored / reference outputs (golden outputs,
# release fidelity, batch invariance, exports against eager, ...): MODEL.CHANNELS_LAST and
# MODEL.WINOGRAD default to "auto", which on the CPU changes results by float32 rounding
# (utils/cpu_speedups.py), so these run with both pinned False in the default config that every
# test clones. Entries: a module path under tests/ or a node id prefix ("path.py::test_name").
EXACT_NUMERICS = (
    "modeling/test_golden_outputs.py",
    "layers/test_batch_norm.py",  # the folded detector against the unfolded one
    "layers/test_winograd.py",  # Winograd against the direct default (tolerances of one change)
    "modeling/test_detector.py::test_channels_last_matches_default_layout",
    "modeling/test_detector.py::test_compile_matches_eager",
)


def _pins_speedups(nodeid: str) -> bool:
    rel = nodeid[len("tests/"):] if nodeid.startswith("tests/") else nodeid
    module = rel.split("::", 1)[0]
    return any(module == entry or rel == entry or rel.startswith(entry + "[") for entry in EXACT_NUMERICS)


@pytest.fixture(autouse=True)
def _exact_numerics_pin_cpu_speedups(request, monkeypatch):
    """MODEL.CHANNELS_LAST / MODEL.WINOGRAD False in the default config for :data:`EXACT_NUMERICS`."""
    if _pins_speedups(request.node.nodeid):
        from maskrcnn_benchmark.config import cfg

        monkeypatch.setitem(cfg.MODEL, "CHANNELS_LAST", False)
        monkeypatch.setitem(cfg.MODEL, "WINOGRAD", False)
    yield
