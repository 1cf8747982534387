"""torch.export / AOTInductor package of the inference graph (maskrcnn_benchmark/export/aoti.py),
run through the evaluation path of tools/infer_onnx.py, against the eager PyTorch model."""
import os
import shutil
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from helpers import assert_same_detections, tiny_cfg, tiny_model  # noqa: E402

from maskrcnn_benchmark.export.aoti import AotiDetector, export_aoti, export_program, load_aoti, min_side  # noqa: E402
from maskrcnn_benchmark.structures.image_list import ImageList  # noqa: E402


def _model():
    """A tiny ATSS model whose GN shifts are N(0, 1) (the padding is not zero after them)."""
    model = tiny_model(tiny_cfg("ATSS"))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.bias.normal_()
    return model


def _batches():
    """Mixed-size batches (zero padding, as the loader pads): one at the program's smallest size
    and one below it (the runtime pads it up to ``min_side``)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for hw, sizes in (((160, 224), [(160, 224), (70, 100), (150, 60)]), ((96, 128), [(96, 128), (60, 40)])):
        x = torch.zeros(len(sizes), 3, *hw)
        for i, (h, w) in enumerate(sizes):
            x[i, :, :h, :w] = torch.randn(3, h, w, generator=g) * 50.0
        out.append(ImageList(x, sizes))
    return out


def _assert_equals_eager(detector, model):
    for batch in _batches():
        with torch.no_grad():
            want = model(batch)
        got = detector(batch)
        for ref, det in zip(want, got):
            assert len(ref) > 0 and det.size == ref.size
            assert_same_detections(ref, det.bbox, det.get_field("scores"), det.get_field("labels"))


def test_exported_program_gives_the_eager_detections():
    """torch.export (dynamic batch / H / W; traced at 160 x 192) run by the AOTI detector's code
    path on two other sizes gives the eager model's batch-invariant detections."""
    model = _model()
    assert min_side(model) == 160  # first multiple of 32 above the largest stride, 128
    program = export_program(model)
    _assert_equals_eager(AotiDetector(program.module(), model), model)


def test_aoti_class_count_and_bad_files(tmp_path, monkeypatch):
    from maskrcnn_benchmark.config import cfg as default_cfg  # noqa: F401
    from maskrcnn_benchmark.export import aoti, runtime

    cfg = tiny_cfg("ATSS")
    runner = lambda images, sizes: [torch.zeros(images.shape[0], 10, 7), torch.zeros(images.shape[0], 10, 4),  # noqa: E731
                                    torch.zeros(images.shape[0], 10, 7, dtype=torch.bool)]
    monkeypatch.setattr(aoti, "load_aoti", lambda path: runner)
    with pytest.raises(ValueError, match="the graph has 7 foreground classes, the config / dataset 4"):
        runtime.build_exported_detector(cfg, "m.pt2", runtime="aoti")
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="no such AOTInductor package"):
        load_aoti(str(tmp_path / "missing.pt2"))
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.pt2: not a loadable AOTInductor package"):
        load_aoti(str(bad))
    with pytest.raises(ValueError, match=r"must end in \.pt2"):
        export_aoti(_model(), str(tmp_path / "m.onnx"))


@pytest.mark.skipif(os.environ.get("MASKRCNN_BENCHMARK_TEST_AOTI", "0") != "1" or shutil.which("c++") is None,
                    reason="AOTInductor compiles C++ for minutes on 2 CPU cores; needs a compiler; set "
                           "MASKRCNN_BENCHMARK_TEST_AOTI=1 to run it")
def test_aoti_package_gives_the_eager_detections(tmp_path):
    model = _model()
    path = export_aoti(model, str(tmp_path / "m.pt2"))
    _assert_equals_eager(AotiDetector(load_aoti(path), model), model)
