"""tools/benchmarks/bench_loader.py: one tiny real run (no timing asserted) and its input check."""
import importlib.util
import os
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "benchmarks" / "bench_loader.py"
_SPEC = importlib.util.spec_from_file_location("bench_loader", SCRIPT)
bench_loader = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_loader)


def test_proc_cpu_seconds_reads_this_process():
    t = bench_loader._proc_cpu_seconds(os.getpid())
    assert 0.0 < t <= os.times().user + os.times().system + 0.05


def test_compare_flags_a_changed_input(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    entry = {"input": x, "sizes": [(8, 8), (5, 6)], "indices": [3, 1], "boxes": [torch.ones(1, 4)]}
    a, b, c = (str(tmp_path / n) for n in ("a.pt", "b.pt", "c.pt"))
    torch.save(entry, a)
    torch.save(dict(entry, input=x.clone()), b)
    y = x.clone()
    y[1, 0, 6, 7] = -0.0 if y[1, 0, 6, 7] != 0 else 1.0
    torch.save(dict(entry, input=y, indices=[3, 2]), c)
    assert bench_loader._compare(a, b) == []
    assert bench_loader._compare(a, c) == ["indices", "input"]


def test_tiny_run_works_and_checks_the_model_input(tmp_path, capsys):
    rc = bench_loader.main(["--images", "6", "--image-size", "96", "--min-size", "64", "--max-size", "96",
                            "--batch", "2", "--batches", "6", "--warmup", "1", "--repeats", "2",
                            "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "| new | torch.uint8 |" in out
    assert "model input of the first batch identical (bit for bit) across all 2 runs" in out
