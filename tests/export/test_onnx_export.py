"""ONNX export of every dense head, run in onnxruntime, against PyTorch.

Tolerances: float32 graph, scores within 1e-4 (absolute) and boxes within 1e-4 relative
(``|d| <= 1e-4 * max(1, largest |coordinate| of the box)``: boxes are in pixels); detections after NMS equal to the PyTorch
post-processor's (same count, labels, scores within 1e-5, boxes within 1e-3 px; order of equal
scores free). FP16 graph (float16 network, float32 scores / decoding): scores within 2e-2 and
boxes within 2 px of PyTorch float32 on a 128 x 160 input.
"""
import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

sys.path.insert(0, os.path.dirname(__file__))
from helpers import HEADS, HW, assert_same_detections, images, tiny_cfg, tiny_model  # noqa: E402

from maskrcnn_benchmark.export.graph import DenseDetectorGraph  # noqa: E402
from maskrcnn_benchmark.export.onnx_export import (MAX_OPSET, check_opset, export_detector,  # noqa: E402
                                                   find_dcn_modules)
from maskrcnn_benchmark.export.runtime import create_session  # noqa: E402
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS  # noqa: E402


def _assert_candidates_close(session, model, x, score_atol=1e-4, box_rtol=1e-4, box_atol=None):
    """The session's candidates on x (every image filling the tensor) against PyTorch's graph."""
    feeds = {"images": x.numpy()}
    if "image_sizes" in {i.name for i in session.get_inputs()}:
        feeds["image_sizes"] = np.array([list(x.shape[-2:])] * x.shape[0], np.float32)
    scores, boxes, mask = session.run(["scores", "boxes", "candidate_mask"], feeds)
    hw = tuple(x.shape[-2:])
    with torch.no_grad():
        ref_s, ref_b, ref_m = (t.numpy() for t in DenseDetectorGraph(model, hw)(x))
    assert scores.shape == ref_s.shape and boxes.shape == ref_b.shape
    assert scores.dtype == np.float32 and boxes.dtype == np.float32
    np.testing.assert_allclose(scores, ref_s, atol=score_atol, rtol=0)
    scale = np.maximum(1.0, np.abs(ref_b).max(axis=-1, keepdims=True))  # per box
    tol = box_atol if box_atol is not None else box_rtol * scale
    assert (np.abs(boxes - ref_b) <= tol).all(), float(np.abs(boxes - ref_b).max())
    return mask, ref_m


@pytest.fixture(scope="module", params=HEADS)
def head_model(request):
    cfg = tiny_cfg(request.param)
    return request.param, cfg, tiny_model(cfg)


def test_candidates_fp32_dynamic_batch(head_model, tmp_path):
    """--postprocess none --dynamic-batch, exported at batch 1, run at batch 3."""
    head, cfg, model = head_model
    path = str(tmp_path / f"{head}.onnx")
    result = export_detector(cfg, path, dynamic_batch=True, height=HW[0], width=HW[1], model=model)
    assert result.max_abs_diff["scores"] <= 1e-4
    session = create_session(path)
    assert session.get_inputs()[0].shape[0] == "batch"
    mask, ref_mask = _assert_candidates_close(session, model, images(3))
    assert (mask == ref_mask).mean() > 0.9999 and ref_mask.any()


def test_detections_after_nms_fixed_batch(head_model, tmp_path):
    """--postprocess nms --batch 2: the detections of the PyTorch post-processor, padded."""
    head, cfg, model = head_model
    path = str(tmp_path / f"{head}_nms.onnx")
    export_detector(cfg, path, batch=2, height=HW[0], width=HW[1], postprocess="nms", model=model,
                    verify=False)
    session = create_session(path)
    assert session.get_inputs()[0].shape[0] == 2
    x = images(2, seed=5)
    sizes = [(128, 160), (96, 120)]
    boxes, scores, labels = session.run(None, {"images": x.numpy(),
                                               "image_sizes": np.array(sizes, np.float32)})
    assert boxes.shape == (2, cfg.TEST.DETECTIONS_PER_IMG, 4) and labels.dtype == np.int64
    from maskrcnn_benchmark.modeling.dense_heads.base import DensePrediction

    graph = DenseDetectorGraph(model, HW)
    with torch.no_grad():
        s, b, m = graph(x, torch.tensor(sizes, dtype=torch.float32))  # image 1: a 96 x 128 canvas
        expected = model.rpn.post_processor(DensePrediction(s, b, m, graph.level_sizes), sizes)
    for i in range(2):
        assert len(expected[i]) > 0
        assert_same_detections(expected[i], boxes[i], scores[i], labels[i])
    assert boxes[1][:, [0, 2]].max() <= 120 and boxes[1][:, [1, 3]].max() <= 96


def test_fp16_graph_simplified(head_model, tmp_path):
    head, cfg, model = head_model
    path = str(tmp_path / f"{head}_fp16.onnx")
    export_detector(cfg, path, height=HW[0], width=HW[1], simplify=True, fp16=True, model=model,
                    verify=False)
    import onnx

    graph = onnx.load(path).graph
    types = {i.name: i.type.tensor_type.elem_type for i in list(graph.input) + list(graph.output)}
    assert types["images"] == types["scores"] == types["boxes"] == onnx.TensorProto.FLOAT
    convs = [n for n in graph.node if n.op_type == "Conv"]
    inits = {i.name: i.data_type for i in graph.initializer}
    assert convs and all(inits[n.input[1]] == onnx.TensorProto.FLOAT16 for n in convs)
    _assert_candidates_close(create_session(path), model, images(1), score_atol=2e-2, box_atol=2.0)


def test_no_project_ops_in_graph(tmp_path):
    import onnx

    cfg = tiny_cfg("ATSS")
    path = str(tmp_path / "a.onnx")
    export_detector(cfg, path, height=HW[0], width=HW[1], postprocess="nms",
                    model=tiny_model(cfg), verify=False)
    ops = {(n.domain, n.op_type) for n in onnx.load(path).graph.node}
    assert all(domain in ("", "ai.onnx") for domain, _ in ops)
    assert ("", "NonMaxSuppression") in ops and ("", "TopK") in ops


def test_dcn_exports_as_standard_deform_conv(tmp_path):
    import onnx

    cfg = tiny_cfg("ATSS")
    cfg.MODEL.ATSS.USE_DCN_IN_TOWER = True
    model = tiny_model(cfg)
    with torch.no_grad():  # non-zero offsets, so the deformable sampling matters
        for name, p in model.named_parameters():
            if "offset" in name:
                p.normal_(0.0, 0.05)
    assert find_dcn_modules(model)
    with pytest.raises(ValueError, match="DeformConv.*USE_DCN_IN_TOWER"):
        export_detector(cfg, str(tmp_path / "d.onnx"), height=HW[0], width=HW[1], opset=17,
                        model=model)
    path = str(tmp_path / "d.onnx")
    export_detector(cfg, path, height=HW[0], width=HW[1], model=model, verify=False)  # opset 19
    assert "DeformConv" in {n.op_type for n in onnx.load(path).graph.node}
    _assert_candidates_close(create_session(path), model, images(1))


@pytest.mark.parametrize("opset", [12, MAX_OPSET + 1])
def test_unsupported_opset(opset, tmp_path):
    with pytest.raises(ValueError, match=f"--opset {opset} is not supported"):
        check_opset(opset)
    cfg = tiny_cfg("FCOS")
    with pytest.raises(ValueError, match="not supported"):
        export_detector(cfg, str(tmp_path / "x.onnx"), opset=opset, model=tiny_model(cfg))
    assert not (tmp_path / "x.onnx").exists()


def test_weights_that_do_not_fit_the_config(tmp_path):
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer

    trained = tiny_model(tiny_cfg("ATSS", num_classes=3))
    weights = Checkpointer(trained, save_dir=str(tmp_path), save_to_disk=True).save("m")
    cfg = tiny_cfg("ATSS", num_classes=5)
    cfg.MODEL.WEIGHT = weights
    with pytest.raises((ValueError, RuntimeError), match="cls_logits"):
        export_detector(cfg, str(tmp_path / "x.onnx"), height=HW[0], width=HW[1])
    assert not (tmp_path / "x.onnx").exists()


def _gn_shifted(model):
    """``model`` with N(0, 1) GroupNorm shifts (the padding is then not zero after a GN)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.bias.normal_()
    return model


def _mixed_batch(hw, sizes, seed):
    """An ImageList of images of ``sizes`` padded to ``hw`` (zeros, as the loader pads)."""
    from maskrcnn_benchmark.structures.image_list import ImageList

    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(sizes), 3, *hw)
    for i, (h, w) in enumerate(sizes):
        x[i, :, :h, :w] = torch.randn(3, h, w, generator=g) * 50.0
    return ImageList(x, sizes)


@pytest.mark.parametrize("head", sorted(DENSE_HEADS.keys()))
def test_dynamic_shape_graphs_equal_pytorch_eager(head, tmp_path):
    """--dynamic-shape --dynamic-batch, traced at 64 x 96, run on two other sizes with images of
    different canvases: the nms graph and the none graph (+ the PyTorch post-processor) give the
    detections of the eager PyTorch model (batch-invariant) on the same batch."""
    from maskrcnn_benchmark.export.runtime import OnnxDetector, level_sizes_of

    cfg = tiny_cfg(head)
    model = _gn_shifted(tiny_model(cfg))
    detectors = {}
    for post in ("none", "nms"):
        path = str(tmp_path / f"{post}.onnx")
        export_detector(cfg, path, dynamic_batch=True, dynamic_shape=True, height=64, width=96,
                        postprocess=post, model=model, verify=False)
        session = create_session(path)
        assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
        detectors[post] = OnnxDetector(session, model.rpn.post_processor,
                                       lambda hw: level_sizes_of(model, hw))
    for hw, sizes in (((96, 192), [(96, 192), (50, 150)]), ((160, 64), [(130, 64), (160, 40), (70, 30)])):
        batch = _mixed_batch(hw, sizes, seed=len(sizes))
        with torch.no_grad():
            want = model(batch)
        for post, detector in detectors.items():
            got = detector(batch)
            for ref, det in zip(want, got):
                assert len(ref) > 0
                assert_same_detections(ref, det.bbox, det.get_field("scores"), det.get_field("labels"))


def test_dynamic_shape_fp16_and_dcn(tmp_path):
    """A dynamic-shape FP16 graph (float16 network) and a DCN one (DeformConv, opset 19), run at
    a size other than the traced one, against PyTorch float32 candidates at that size."""
    import onnx

    cfg = tiny_cfg("ATSS")
    cfg.MODEL.ATSS.USE_DCN_IN_TOWER = True
    model = tiny_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "offset" in name:
                p.normal_(0.0, 0.05)
    path = str(tmp_path / "dcn.onnx")
    export_detector(cfg, path, dynamic_shape=True, height=64, width=96, model=model, verify=False)
    assert "DeformConv" in {n.op_type for n in onnx.load(path).graph.node}
    _assert_candidates_close(create_session(path), model, images(1, (96, 160)))
    cfg = tiny_cfg("FCOS")
    model = tiny_model(cfg)
    path = str(tmp_path / "fp16.onnx")
    export_detector(cfg, path, dynamic_shape=True, dynamic_batch=True, height=64, width=96,
                    fp16=True, model=model, verify=False)
    _assert_candidates_close(create_session(path), model, images(2, (128, 96)), score_atol=2e-2,
                             box_atol=2.0)
