"""Before/after check of the dense-detector refactoring: every registered head's synthetic detector
gives the saved losses (first 3 SGD steps) and detections (``golden/heads/<HEAD>.pt``, see
``golden/make_golden_outputs.py``; a head without an entry fails, naming the command that adds it).

Every op on this path is deterministic on the CPU with one thread, and on the machine that saved
the file the outputs were bit-identical (``torch.equal``) before and after the refactor. Other CPUs
pick other oneDNN / BLAS kernels (AVX2 vs AVX-512 sum orders), which move float32 results by a few
ulps, so the check here is a tolerance just above that rounding: losses to 1e-5 relative, boxes to
1e-3 px, scores to 1e-5, labels exact. A real change of a formula moves them by far more.
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

from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS  # noqa: E402

CONFIG_OF_HEAD = golden.config_of_head()


def test_every_saved_entry_is_a_registered_head():
    saved = sorted(f[:-3] for f in os.listdir(golden.GOLDEN_DIR) if f.endswith(".pt"))
    stale = sorted(set(saved) - set(DENSE_HEADS.keys()))
    assert not stale, f"golden entries of unregistered heads: {stale} (remove golden/heads/<HEAD>.pt)"


@pytest.mark.parametrize("head", sorted(DENSE_HEADS.keys()))
def test_outputs_match_saved(head):
    assert head in CONFIG_OF_HEAD, f"registered head {head} has no configs/*/*_synthetic.yaml"
    path = CONFIG_OF_HEAD[head]
    if not os.path.exists(golden.golden_file(head)):
        pytest.fail(f"registered head {head} has no golden outputs ({golden.golden_file(head)}); "
                    f"add them with: {golden.COMMAND.format(head)}", pytrace=False)
    saved = torch.load(golden.golden_file(head), weights_only=True)
    assert saved["config"] == golden.key_of(path), (
        f"{head}: saved from {saved['config']}, its synthetic config is now {golden.key_of(path)}")
    now = golden.run_config(path)
    assert len(now["losses"]) == len(saved["losses"]) == golden.NUM_STEPS
    for step, (a, b) in enumerate(zip(now["losses"], saved["losses"])):
        assert sorted(a) == sorted(b), f"step {step}: loss names {sorted(a)} != {sorted(b)}"
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"step {step} {name}: {m}")
    assert len(now["detections"]) == len(saved["detections"]) == 3
    for i, (a, b) in enumerate(zip(now["detections"], saved["detections"])):
        assert len(b["scores"]) > 0
        for field in ("boxes", "scores", "labels"):
            assert a[field].dtype == b[field].dtype, f"image {i} {field} dtype"
            tol = {"boxes": (1e-5, 1e-3), "scores": (1e-5, 1e-6), "labels": (0, 0)}[field]
            torch.testing.assert_close(a[field], b[field], rtol=tol[0], atol=tol[1],
                                       msg=lambda m: f"image {i} {field}: {m}")
