"""tools/plot_curves.py: curves collected from metrics.jsonl files and drawn into a PNG."""
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool():
    spec = importlib.util.spec_from_file_location("tools_plot_curves", os.path.join(ROOT, "tools", "plot_curves.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(folder, scale):
    os.makedirs(folder)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for it in (20, 40, 60):
            f.write(json.dumps({"iteration": it, "lr": 0.01 * it / 60, "time": 0.3, "data_time": 0.01,
                                "loss": scale * 3.0 / it, "loss_cls": scale * 2.0 / it, "loss_reg": scale / it}) + "\n")
        f.write(json.dumps({"iteration": 60, "dataset": "val", "bbox/AP": 0.1 * scale, "bbox/AP50": 0.2}) + "\n")


@pytest.fixture()
def runs(tmp_path):
    a, b = str(tmp_path / "run_a"), str(tmp_path / "run_b")
    _write_run(a, 1.0)
    _write_run(b, 2.0)
    return a, b


def test_collect_curves(runs):
    tool = _tool()
    curves = tool.collect_curves(list(runs))
    assert list(curves) == ["loss", "loss_cls", "loss_reg", "lr", "bbox/AP"]
    assert curves["loss_cls"]["run_a"] == ([20, 40, 60], [pytest.approx(0.1), pytest.approx(0.05), pytest.approx(2 / 60)])
    assert curves["loss_cls"]["run_b"][1][0] == pytest.approx(0.2)
    assert curves["bbox/AP"] == {"run_a": ([60], [pytest.approx(0.1)]), "run_b": ([60], [pytest.approx(0.2)])}
    assert tool.collect_curves([runs[0]], ["bbox/AP50"]) == {"bbox/AP50": {"run_a": ([60], [0.2])}}


def test_plot_curves_writes_a_png_with_both_runs(runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "curves.png")
    assert _tool().main([*runs, "--output", out]) == out
    image = cv2.imread(out)
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 600
    # matplotlib's first two line colours (C0 #1f77b4, C1 #ff7f0e; BGR here) both appear: two runs drawn
    for bgr in ((180, 119, 31), (14, 127, 255)):
        assert (np.abs(image.astype(int) - bgr).sum(axis=2) < 30).sum() > 50


def test_missing_run_folder_is_an_error(tmp_path):
    with pytest.raises(SystemExit):
        _tool().main([str(tmp_path / "nope"), "--output", str(tmp_path / "c.png")])
