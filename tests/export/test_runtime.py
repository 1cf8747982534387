"""onnxruntime inference: evaluation through run_test (the files of tools/test_net.py), the
tools' command lines, the benchmark, and the clear errors."""
import importlib.util
import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from helpers import SMALL, images, tiny_cfg, tiny_model  # noqa: E402

from maskrcnn_benchmark.export.deps import require  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_optional_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # import onnxslim -> ImportError
    with pytest.raises(ImportError, match=r"'onnxslim'.*--simplify.*pip install onnxslim.*\.\[deploy\]"):
        require("onnxslim", "--simplify")


def test_export_without_onnxslim_is_a_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("onnx")
    from maskrcnn_benchmark.export.onnx_export import export_detector

    monkeypatch.setitem(sys.modules, "onnxslim", None)
    cfg = tiny_cfg("ATSS")
    with pytest.raises(ImportError, match="pip install onnxslim"):
        export_detector(cfg, str(tmp_path / "m.onnx"), height=64, width=96, simplify=True,
                        model=tiny_model(cfg))
    assert not (tmp_path / "m.onnx").exists()


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    """Four 48 x 64 images (resized to 64 x 85, padded to 64 x 96 in both runtimes)."""
    root = str(tmp_path_factory.mktemp("coco"))
    return _write_coco(root, [(48, 64)] * 4, seed=0, left=10, right=40, area=840.0)


def _write_coco(root, sizes, seed, left, right, area):
    """A two-class COCO dataset under ``root`` (``img/<i>.png`` of ``sizes`` (h, w), random pixels
    with one filled rectangle each, its box annotated); returns its DATASETS name."""
    os.makedirs(os.path.join(root, "img"))
    g = np.random.default_rng(seed)
    imgs, anns = [], []
    for i, (h, w) in enumerate(sizes):
        img = g.integers(0, 255, (h, w, 3), dtype=np.uint8)
        cv2.rectangle(img, (left + i, 8), (right, 36), (0, 200, 255), -1)
        cv2.imwrite(os.path.join(root, "img", f"{i}.png"), img)
        imgs.append({"id": 10 + i, "file_name": f"{i}.png", "height": h, "width": w})
        anns.append({"id": i + 1, "image_id": 10 + i, "category_id": 1 + i % 2,
                     "bbox": [left + i, 8, right - left - i, 28], "area": area, "iscrowd": 0})
    with open(os.path.join(root, "ann.json"), "w") as f:
        json.dump({"images": imgs, "annotations": anns,
                   "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}, f)
    return f"{root}/ann.json:{root}/img"


def _opts(dataset, out):
    return ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)",
            "OUTPUT_DIR", out, "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "2",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "MODEL.ATSS.INFERENCE_TH", "0.3",
            "MODEL.ATSS.NUM_CLASSES", "3", "MODEL.ATSS.NUM_CONVS", "1", "MODEL.ATSS.PRE_NMS_TOP_N", "50",
            "TEST.DETECTIONS_PER_IMG", "20", "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "32",
            "MODEL.GROUP_NORM.NUM_GROUPS", "8"]


def _detections(folder):
    dets = json.loads((folder / "bbox.json").read_text())
    return sorted((d["image_id"], d["category_id"], round(d["score"], 4), *np.round(d["bbox"], 2))
                  for d in dets)


@pytest.mark.parametrize("postprocess", ["nms", "none"])
def test_infer_onnx_accuracy_matches_test_net(tmp_path, tiny_coco, postprocess):
    pytest.importorskip("onnxruntime")
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer
    from maskrcnn_benchmark.config import setup_cfg

    torch_out, onnx_out = tmp_path / "torch", tmp_path / "onnx"
    cfg = setup_cfg(SMALL, _opts(tiny_coco, str(torch_out)))
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    with torch.no_grad():
        model.rpn.head.cls_logits.bias.normal_()
    weights = Checkpointer(model, save_dir=str(tmp_path / "w"), save_to_disk=True).save("m")

    ref = _load_tool("test_net").main(["--config-file", SMALL, *_opts(tiny_coco, str(torch_out)),
                                       "MODEL.WEIGHT", weights])
    path = str(tmp_path / "m.onnx")
    _load_tool("export_onnx").main(["--config-file", SMALL, "--output", path, "--height", "64",
                                    "--width", "96", "--batch", "2", "--postprocess", postprocess,
                                    *_opts(tiny_coco, str(onnx_out)), "MODEL.WEIGHT", weights])
    got = _load_tool("infer_onnx").main(["--config-file", SMALL, "--model", path,
                                         *_opts(tiny_coco, str(onnx_out))])
    folder = "ann"
    want_dets = _detections(torch_out / "inference" / folder)
    got_dets = _detections(onnx_out / "inference" / folder)
    assert len(want_dets) > 4 and got_dets == want_dets
    metrics = json.loads((onnx_out / "inference" / folder / "metrics.json").read_text())
    assert metrics["num_images"] == 4
    for k, v in ref[tiny_coco].items():
        assert got[tiny_coco][k] == pytest.approx(v, abs=1e-6)
        assert metrics["bbox"][k] == pytest.approx(v, abs=1e-6)


def test_benchmark_and_config_mismatch(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from maskrcnn_benchmark.export.onnx_export import export_detector
    from maskrcnn_benchmark.export.runtime import OnnxDetector, benchmark, create_session, fixed_batch

    cfg = tiny_cfg("FCOS")
    path = str(tmp_path / "f.onnx")
    export_detector(cfg, path, dynamic_batch=True, height=64, width=96, postprocess="nms",
                    model=tiny_model(cfg), verify=False)
    detector = OnnxDetector(create_session(path))
    assert detector.batch is None and (detector.height, detector.width) == (64, 96)
    stats = benchmark(lambda: detector(fixed_batch(3, 64, 96)), batch=3, warmup=1, iters=2)
    assert stats["iters"] == 2 and stats["img_per_s"] == pytest.approx(3000.0 / stats["ms_per_batch"])

    opts = ["MODEL.HEAD", "FCOS", "MODEL.FCOS.NUM_CLASSES", "5", "MODEL.FCOS.NUM_CONVS", "1",
            "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
            "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "32", "MODEL.GROUP_NORM.NUM_GROUPS", "8"]
    rows = _load_tool("infer_onnx").main(["--config-file", SMALL, "--model", path, "--benchmark",
                                          "--batch", "2", "--warmup", "1", "--iters", "1",
                                          "--torch", "fp32,bf16", *opts])
    assert [r["backend"] for r in rows] == ["onnxruntime (cpu)", "pytorch fp32 (cpu)", "pytorch bf16 (cpu)"]
    assert "img/s" in capsys.readouterr().out

    none_path = str(tmp_path / "n.onnx")
    export_detector(cfg, none_path, height=64, width=96, model=tiny_model(cfg), verify=False)
    with pytest.raises(SystemExit):  # 9 classes in the config, 4 in the graph
        _load_tool("infer_onnx").main(["--config-file", SMALL, "--model", none_path, "--benchmark",
                                       *opts[:2], "MODEL.FCOS.NUM_CLASSES", "10", *opts[4:]])
    assert "export and evaluate with the same config" in capsys.readouterr().err


def test_onnx_detector_scales_down_images_larger_than_the_graph(tmp_path):
    pytest.importorskip("onnxruntime")
    from maskrcnn_benchmark.export.onnx_export import export_detector
    from maskrcnn_benchmark.export.runtime import OnnxDetector, create_session
    from maskrcnn_benchmark.structures.image_list import ImageList

    cfg = tiny_cfg("RETINANET")
    path = str(tmp_path / "r.onnx")
    export_detector(cfg, path, batch=2, height=64, width=64, postprocess="nms",
                    model=tiny_model(cfg), verify=False)
    detector = OnnxDetector(create_session(path))
    x = torch.zeros(3, 3, 128, 96)
    x[:, :, :128, :96] = images(3, (128, 96))
    out = detector(ImageList(x, [(128, 96), (64, 64), (60, 50)]))  # 3 images, batch-2 graph
    assert [d.size for d in out] == [(96, 128), (64, 64), (50, 60)]
    assert len(out[0]) > 0 and float(out[0].bbox[:, 3].max()) > 64  # scaled back to 128 x 96


@pytest.fixture(scope="module")
def mixed_coco(tmp_path_factory):
    """Four images of two orientations: 48 x 64 (resized to 64 x 85, canvas 64 x 96) and 64 x 48
    (85 x 64, canvas 96 x 64); a batch of both pads to 96 x 96."""
    root = str(tmp_path_factory.mktemp("mixed"))
    return _write_coco(root, [(48, 64), (64, 48), (64, 48), (48, 64)], seed=1, left=5, right=30,
                       area=500.0)


def _assert_same_detections(got, want):
    """Two bbox.json lists (``_detections`` rows): the same rows, scores within 1e-4 and boxes
    within 1e-3 px (plus the json's 2-decimal rounding)."""
    assert len(got) == len(want) > 4
    a, b = np.array(got, dtype=np.float64), np.array(want, dtype=np.float64)
    np.testing.assert_array_equal(a[:, :2], b[:, :2])
    np.testing.assert_allclose(a[:, 2], b[:, 2], atol=1.1e-4)
    np.testing.assert_allclose(a[:, 3:], b[:, 3:], atol=1e-2 + 1e-3)


@pytest.fixture(scope="module")
def mixed_weights(tmp_path_factory, mixed_coco):
    """Weights of a model whose GN head towers have non-zero shifts (the padding is not zero
    after them) and that detects (classification bias N(0, 1)), and its test_net detections at
    TEST.IMS_PER_BATCH 1."""
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer
    from maskrcnn_benchmark.config import setup_cfg

    tmp = tmp_path_factory.mktemp("mixed_w")
    cfg = setup_cfg(SMALL, _opts(mixed_coco, str(tmp / "x")))
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    with torch.no_grad():
        model.rpn.head.cls_logits.bias.normal_()
        for m in model.rpn.head.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.bias.normal_()
    weights = Checkpointer(model, save_dir=str(tmp / "w"), save_to_disk=True).save("m")
    return weights, _test_net_detections(tmp, mixed_coco, weights, 1)


def _test_net_detections(tmp, dataset, weights, batch, *extra):
    out = tmp / f"torch{batch}{len(extra)}"
    opts = _opts(dataset, str(out)) + ["TEST.IMS_PER_BATCH", str(batch), *extra]
    _load_tool("test_net").main(["--config-file", SMALL, *opts, "MODEL.WEIGHT", weights])
    return _detections(out / "inference" / "ann")


def test_test_net_batch_invariant_on_mixed_sizes(tmp_path, mixed_coco, mixed_weights):
    """GroupNorm head towers, images of two canvases: test_net at TEST.IMS_PER_BATCH 2 and 4
    gives the detections of TEST.IMS_PER_BATCH 1; the releases' behaviour (TEST.BATCH_INVARIANT
    False) at batch 4 does not."""
    weights, alone = mixed_weights
    _assert_same_detections(_test_net_detections(tmp_path, mixed_coco, weights, 2), alone)
    _assert_same_detections(_test_net_detections(tmp_path, mixed_coco, weights, 4), alone)
    with pytest.raises(AssertionError):
        _assert_same_detections(_test_net_detections(tmp_path, mixed_coco, weights, 4,
                                                     "TEST.BATCH_INVARIANT", "False"), alone)


@pytest.mark.parametrize("shape", ["fixed", "fixed_dynamic_batch", "dynamic"])
@pytest.mark.parametrize("postprocess", ["nms", "none"])
def test_infer_onnx_equals_test_net_on_mixed_sizes(tmp_path, mixed_coco, mixed_weights,
                                                   postprocess, shape):
    """The fixed 96 x 96 graph at batch 2 or with a dynamic batch (every image padded to the
    graph's canvas, masked from image_sizes) and the dynamic-shape graph (traced at 64 x 96, run on the loader's batches)
    give test_net's batch-1 detections."""
    pytest.importorskip("onnxruntime")
    weights, alone = mixed_weights
    path, onnx_out = str(tmp_path / "m.onnx"), tmp_path / "onnx"
    size = {"fixed": ["--height", "96", "--width", "96", "--batch", "2"],
            # its none graph names the candidate and class axes too (once refused as a mismatch)
            "fixed_dynamic_batch": ["--height", "96", "--width", "96", "--dynamic-batch"],
            "dynamic": ["--height", "64", "--width", "96", "--dynamic-batch", "--dynamic-shape"]}[shape]
    _load_tool("export_onnx").main(["--config-file", SMALL, "--output", path, *size,
                                    "--postprocess", postprocess,
                                    *_opts(mixed_coco, str(onnx_out)), "MODEL.WEIGHT", weights])
    _load_tool("infer_onnx").main(["--config-file", SMALL, "--model", path,
                                   *_opts(mixed_coco, str(onnx_out))])
    _assert_same_detections(_detections(onnx_out / "inference" / "ann"), alone)


def test_infer_onnx_refuses_nms_graph_of_another_class_count(tmp_path, tiny_coco, capsys):
    """The nms graph has 3 foreground classes (metadata, and without it the cls_logits weight),
    the dataset 2: exit status 2 naming both; a corrupt file: exit status 2, a clear message."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from maskrcnn_benchmark.export.onnx_export import export_detector

    opts = _opts(tiny_coco, str(tmp_path / "out"))
    i = opts.index("MODEL.ATSS.NUM_CLASSES")
    cfg = tiny_cfg("ATSS", num_classes=3)
    path = str(tmp_path / "nms.onnx")
    export_detector(cfg, path, height=64, width=96, postprocess="nms", model=tiny_model(cfg),
                    verify=False)
    stripped = onnx.load(path)
    assert {p.key: p.value for p in stripped.metadata_props}["num_classes"] == "3"
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp_path / "old.onnx"))
    tiny = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16"]
    for model_path in (path, str(tmp_path / "old.onnx")):
        with pytest.raises(SystemExit) as exit_info:
            _load_tool("infer_onnx").main(["--config-file", SMALL, "--model", model_path,
                                           *opts[:i], "MODEL.ATSS.NUM_CLASSES", "0", *opts[i + 2:],
                                           *tiny])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "the graph has 3 foreground classes, the config / dataset 2" in err, err
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(open(path, "rb").read()[:2000])
    with pytest.raises(SystemExit) as exit_info:
        _load_tool("infer_onnx").main(["--config-file", SMALL, "--model", str(corrupt), *opts])
    assert exit_info.value.code == 2
    assert "corrupt.onnx: not a loadable ONNX model" in capsys.readouterr().err
