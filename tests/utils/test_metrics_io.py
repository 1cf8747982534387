"""metrics.jsonl writer / reader."""
import json
import math

import numpy as np
import pytest
import torch

from maskrcnn_benchmark.utils.metrics_io import MetricsWriter, metric_series, read_metrics, scalar_keys


def test_write_then_read_round_trip(tmp_path):
    with MetricsWriter(str(tmp_path)) as w:  # a folder -> folder/metrics.jsonl
        w.write(20, lr=0.01, time=0.5, data_time=0.1, loss=torch.tensor(1.5), loss_cls=np.float32(1.0),
                loss_reg=0.5)
        w.write(40, lr=torch.tensor(0.02), loss=float("nan"), loss_cls=0.7)
        w.write(40, dataset="val", **{"bbox/AP": 0.25, "bbox/AP50": 0.5})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [20, 40, 40]
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert records[0] == {"iteration": 20, "lr": 0.01, "time": 0.5, "data_time": 0.1, "loss": 1.5, "loss_cls": 1.0,
                          "loss_reg": 0.5}
    assert records[1]["loss"] is None and records[1]["lr"] == pytest.approx(0.02)
    assert records[2] == {"iteration": 40, "dataset": "val", "bbox/AP": 0.25, "bbox/AP50": 0.5}
    assert scalar_keys(records) == ["lr", "time", "data_time", "loss", "loss_cls", "loss_reg", "bbox/AP", "bbox/AP50"]
    assert metric_series(records, "loss") == ([20], [1.5])  # the null is skipped
    assert metric_series(records, "loss_cls") == ([20, 40], [1.0, pytest.approx(0.7)])
    assert metric_series(records, "bbox/AP", dataset="val") == ([40], [0.25])
    assert metric_series(records, "bbox/AP", dataset="other") == ([], [])


def test_appends_to_an_existing_file(tmp_path):
    path = str(tmp_path / "m.jsonl")
    with MetricsWriter(path) as w:
        w.write(1, loss=1.0)
    with MetricsWriter(path) as w:  # a resumed run appends
        w.write(2, loss=0.5)
    assert [r["iteration"] for r in read_metrics(path)] == [1, 2]


def test_truncated_last_line_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 10, "loss": 2.0}\n{"iteration": 20, "loss": 1.0}\n{"iteration": 30, "lo')
    with pytest.warns(UserWarning, match="truncated last line 3"):
        records = read_metrics(str(path))
    assert [r["iteration"] for r in records] == [10, 20]


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 10}\n[1, 2]\n{"iteration": 30}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2"):
        read_metrics(str(path))
    path.write_text('{"loss": 1}\n{"iteration": 30}\n')
    with pytest.raises(ValueError, match=r'line 1.*"iteration"'):
        read_metrics(str(path))
    with pytest.raises(FileNotFoundError, match="nothere"):
        read_metrics(str(tmp_path / "nothere"))


def test_bad_values_are_rejected(tmp_path):
    with MetricsWriter(str(tmp_path / "m.jsonl")) as w:
        with pytest.raises(TypeError, match="'loss'"):
            w.write(1, loss=[1.0])
        with pytest.raises(ValueError, match="iteration"):
            w.write(1, iteration=3)
        assert w.write(2, inf=math.inf)["inf"] is None
