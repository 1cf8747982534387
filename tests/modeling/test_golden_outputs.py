"""Before/after check of the dense-detector refactoring: the six synthetic detectors give exactly
the saved losses (first 3 SGD steps) and detections (see ``golden/make_golden_outputs.py``).

Every op on this path is deterministic on the CPU with one thread, so the comparison is
``torch.equal`` (bit-identical), not a tolerance.
"""
import importlib.util
import os

import pytest
import torch

_SPEC = importlib.util.spec_from_file_location(
    "make_golden_outputs", os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden",
                                        "make_golden_outputs.py"))
golden = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(golden)

SAVED = torch.load(golden.GOLDEN_FILE, weights_only=True)


def test_every_synthetic_config_is_saved():
    assert sorted(SAVED) == sorted(golden.key_of(p) for p in golden.CONFIGS)
    assert len(SAVED) == 6


@pytest.mark.parametrize("path", golden.CONFIGS, ids=lambda p: os.path.basename(p))
def test_outputs_match_saved(path):
    saved = SAVED[golden.key_of(path)]
    now = golden.run_config(path)
    assert len(now["losses"]) == len(saved["losses"]) == golden.NUM_STEPS
    for step, (a, b) in enumerate(zip(now["losses"], saved["losses"])):
        assert sorted(a) == sorted(b), f"step {step}: loss names {sorted(a)} != {sorted(b)}"
        for name in a:
            assert torch.equal(a[name], b[name]), f"step {step} {name}: {a[name]} != {b[name]}"
    assert len(now["detections"]) == len(saved["detections"]) == 3
    for i, (a, b) in enumerate(zip(now["detections"], saved["detections"])):
        assert len(b["scores"]) > 0
        for field in ("boxes", "scores", "labels"):
            assert a[field].dtype == b[field].dtype, f"image {i} {field} dtype"
            assert torch.equal(a[field], b[field]), f"image {i}: {field} differ"
