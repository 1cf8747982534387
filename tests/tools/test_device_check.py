"""tools/device_check.sh --dry-run (every step's command on this CPU machine, GPU parts stubbed) and
tools/fetch_device_wheels.sh --dry-run (the carried wheels are exactly the ones the check needs)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run(args, tmp_path, **env):
    full_env = dict(os.environ, OUT=str(tmp_path / "out"), DEVICE_CHECK_WORK=str(tmp_path / "work"),
                    PYTHON=sys.executable, **env)
    return subprocess.run(["bash", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=900)


def summary_rows(text):
    """{step name: result} from the summary table."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| (.+?) \| (.+?) \| [-\d]+ \|$", text, re.M)}


@pytest.mark.slow
def test_dry_run_runs_every_step(tmp_path):
    so_before = {f: os.stat(os.path.join(ROOT, "maskrcnn_benchmark", f)).st_mtime_ns
                 for f in os.listdir(os.path.join(ROOT, "maskrcnn_benchmark")) if f.startswith("_C")}
    proc = run(["tools/device_check.sh", "--dry-run"], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "PASSED (dry run)" in summary
    rows = summary_rows(summary)
    expected = ["versions, GPU, imports", "registered kernels", "CUDA op tests (each op vs its CPU kernel)",
                "sanitizer workload on the CPU (compute-sanitizer stubbed)", "train 2 iterations (SOLVER.AMP off) + evaluation",
                "training report (finite losses, AP)", "rest of the suite (background)", "ops benchmark vs torchvision"]
    for name in expected:
        assert rows.get(name) == "ok", (name, rows)
    builds = [r for name, r in rows.items() if name.startswith("build")]
    assert builds and builds[-1] == "ok", rows  # the CUDA build's command, or the CPU fallback's
    assert any(name.startswith("compare_torchvision.py") and r == "ok" for name, r in rows.items()), rows
    # the GPU parts are stubbed, and the steps really ran their commands
    assert "[dry-run] nvidia-smi: stubbed" in out
    log = (tmp_path / "out" / "device_check.log").read_text()
    assert "setup.py build_ext --inplace --help" in (tmp_path / "out" / "build.log").read_text()
    assert "sanitize_ops: all ok" in (tmp_path / "out" / "sanitizer.log").read_text()
    assert re.search(r"train: 2 logged iterations, non-finite loss at none, 1 evaluation\(s\): ok", summary)
    assert "bbox/AP" in summary and "iter    2: loss" in summary
    assert re.search(r"\d+ tests? collected", (tmp_path / "out" / "tests_rest.log").read_text())
    assert "tools/benchmarks/bench_ops_cuda.py" in log
    # every output file comes back from the device tool: at most 8, at most 2 folders down
    files = [f for f in (tmp_path / "out").rglob("*") if f.is_file()]
    assert len(files) <= 8 and all(f.parent == tmp_path / "out" for f in files), files
    # the checkout's compiled library is untouched
    assert {f: os.stat(os.path.join(ROOT, "maskrcnn_benchmark", f)).st_mtime_ns for f in so_before} == so_before


def test_deadline_skips_steps_and_says_so(tmp_path):
    """A budget that the reserve for the summary already uses up: every step is skipped with the reason,
    and preflight stops the script (exit 2) instead of running on without the versions."""
    proc = run(["tools/device_check.sh", "--dry-run", "--budget", "9"], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "STOPPED at preflight: deadline (--budget 9 s)" in summary
    rows = summary_rows(summary)
    assert rows["versions, GPU, imports"].startswith("SKIPPED (deadline: ")
    assert "== SKIPPED versions, GPU, imports: deadline" in proc.stdout


def test_unknown_argument_is_refused(tmp_path):
    proc = run(["tools/device_check.sh", "--dryrun"], tmp_path)
    assert proc.returncode == 2 and "unknown argument --dryrun" in proc.stderr


WHEELS = ("yacs-0.1.8-py3-none-any.whl",
          "pycocotools-2.0.11-cp312-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl")


@pytest.mark.parametrize("files, ok, message", [
    (WHEELS, True, "ok: "),
    (WHEELS[:1], False, "MISSING or duplicated: pycocotools==2.0.11"),
    (WHEELS + ("pycocotools-2.0.10-cp312-abi3-manylinux_2_17_x86_64.whl",), False, "MISSING or duplicated: pycocotools"),
    ((WHEELS[0], "pycocotools-2.0.10-cp312-abi3-manylinux_2_17_x86_64.whl"), False, "WRONG VERSION"),
    ((WHEELS[0], "pycocotools-2.0.11-cp311-cp311-manylinux_2_17_x86_64.whl"), False, "NOT FOR CPython 3.12"),
    ((WHEELS[0], "pycocotools-2.0.11-cp312-cp312-macosx_11_0_arm64.whl"), False, "NOT FOR CPython 3.12"),
    (WHEELS + ("numpy-2.1.0-cp312-cp312-manylinux_2_17_x86_64.whl",), False, "EXTRA wheel"),
])
def test_fetch_device_wheels_dry_run_checks_the_set(tmp_path, files, ok, message):
    wheel_dir = tmp_path / "whl"
    wheel_dir.mkdir()
    for name in files:
        (wheel_dir / name).write_bytes(b"")
    proc = run(["tools/fetch_device_wheels.sh", "--dry-run"], tmp_path, DEVICE_WHEELS_DIR=str(wheel_dir))
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    assert message in proc.stdout


@pytest.mark.parametrize("losses, with_eval, ok", [
    ((2.3, 1.9), True, True),
    ((2.3, float("nan")), True, False),  # a non-finite loss (stored as null)
    ((2.3, 1.9), False, False),  # no evaluation line
    ((), True, False),  # no training line
])
def test_training_report_needs_finite_losses_and_an_ap(tmp_path, losses, with_eval, ok):
    from maskrcnn_benchmark.utils.metrics_io import MetricsWriter

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import device_check_steps
    finally:
        sys.path.remove(os.path.join(ROOT, "tools"))
    writer = MetricsWriter(str(tmp_path))
    for i, loss in enumerate(losses, 1):
        writer.write(10 * i, loss=loss, loss_cls=0.5, time=0.1)
    if with_eval:
        writer.write(10 * len(losses), dataset="val", **{"bbox/AP": 0.25, "bbox/AP50": 0.5})
    writer.close()
    assert device_check_steps.train_report(str(tmp_path)) == (0 if ok else 1)
