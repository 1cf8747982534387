"""tools/benchmarks/compare_torchvision.py: argument errors that need no torchvision, and its inputs."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "benchmarks" / "compare_torchvision.py"
_SPEC = importlib.util.spec_from_file_location("compare_torchvision", SCRIPT)
compare_torchvision = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(compare_torchvision)


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=SCRIPT.parents[2])


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "--device tpu: expected cpu or cuda"),
    (["--amp", "fp16"], "--amp fp16 is CUDA autocast"),
    (["--size", "500", "768"], "multiples of 32"),
])
def test_bad_arguments_are_named(args, message):
    out = _run(*args)
    assert out.returncode == 2 and message in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: --device cuda is valid here")
def test_cuda_without_a_gpu_is_a_clear_error():
    out = _run("--device", "cuda")
    assert out.returncode == 2 and "sees no CUDA GPU" in out.stderr


def test_inputs_shapes_ranges_and_device():
    images, boxes, labels = compare_torchvision.make_inputs(2, 64, 96, 3, device="cpu")
    again = compare_torchvision.make_inputs(2, 64, 96, 3, device="meta")
    assert images.shape == (2, 3, 64, 96) and again[0].device.type == "meta"
    for b, lab in zip(boxes, labels):
        assert b.shape == (3, 4) and (b[:, 2:] > b[:, :2]).all() and (b[:, 2] <= 96).all() and (b[:, 3] <= 64).all()
        assert lab.min() >= 0 and lab.max() < compare_torchvision.NUM_FG
