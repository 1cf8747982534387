"""The exportable graph in PyTorch (no onnx needed): the fixed-shape post-processing equals the
PyTorch post-processor, the plain NMS equals the compiled one, and the graph module equals
``DenseHead.predict``."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from helpers import HEADS, HW, assert_same_detections, images, tiny_cfg, tiny_model  # noqa: E402

from maskrcnn_benchmark.export.graph import (DenseDetectorGraph, FixedSizeDetections,  # noqa: E402
                                             plain_nms_indices)
from maskrcnn_benchmark.layers import batched_nms  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thresh", [0.3, 0.6])
def test_plain_nms_matches_compiled_batched_nms(seed, thresh):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, 60, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(2, 60, 2, generator=g) * 30], dim=2)
    labels = torch.randint(0, 3, (2, 60), generator=g)
    score = torch.rand(2, 60, generator=g)
    score[0, :5] = -1.0  # not candidates
    per_class = torch.where(labels[:, None, :] == torch.arange(3)[None, :, None], score[:, None, :],
                            torch.full((2, 3, 60), -1.0))
    rows = plain_nms_indices(boxes, per_class, thresh, -0.5)
    for b in range(2):
        valid = (score[b] >= 0).nonzero().squeeze(1)
        ref = valid[batched_nms(boxes[b, valid], score[b, valid], labels[b, valid], thresh)]
        mine = rows[rows[:, 0] == b]
        assert sorted(mine[:, 2].tolist()) == sorted(ref.tolist())
        assert (mine[:, 1] == labels[b, mine[:, 2]]).all()


@pytest.mark.parametrize("head", HEADS)
def test_graph_equals_predict_and_post_processor(head):
    model = tiny_model(tiny_cfg(head))
    graph = DenseDetectorGraph(model, HW)
    x = images(2)
    with torch.no_grad():
        scores, boxes, mask = graph(x)
        ref = model.rpn.predict(list(model.backbone(x)))
    torch.testing.assert_close(scores, ref.scores, rtol=0, atol=0)
    torch.testing.assert_close(boxes, ref.boxes, rtol=0, atol=0)
    assert torch.equal(mask, ref.candidate_mask)
    assert graph.level_sizes == ref.level_sizes and mask.any()

    post = model.rpn.post_processor
    det = FixedSizeDetections(graph.level_sizes, graph.num_classes, post.pre_nms_top_n,
                              post.nms_thresh, post.detections_per_img)
    sizes = [(128, 160), (100, 130)]  # the second image is padded: boxes clip to 100 x 130
    with torch.no_grad():
        out_b, out_s, out_l = det(scores, boxes, mask, torch.tensor(sizes, dtype=torch.float32))
    assert out_b.shape == (2, post.detections_per_img, 4) and out_l.dtype == torch.int64
    with torch.no_grad():
        expected = post(ref, sizes)
    for i in range(2):
        assert len(expected[i]) > 0
        assert_same_detections(expected[i], out_b[i], out_s[i], out_l[i])


def test_fixed_size_detections_pad_when_few():
    # 1000 > the 5 x 60 candidates of the post-processing: every image is padded
    model = tiny_model(tiny_cfg("RETINANET", threshold=0.9, detections=1000))
    graph = DenseDetectorGraph(model, HW)
    with torch.no_grad():
        scores, boxes, mask = graph(images(1))
    post = model.rpn.post_processor
    det = FixedSizeDetections(graph.level_sizes, graph.num_classes, post.pre_nms_top_n,
                              post.nms_thresh, post.detections_per_img)
    out_b, out_s, out_l = det(scores, boxes, mask, torch.tensor([list(HW)], dtype=torch.float32))
    from maskrcnn_benchmark.modeling.dense_heads.base import DensePrediction

    expected = post(DensePrediction(scores, boxes, mask, graph.level_sizes), [HW])[0]
    assert 0 < len(expected) < 300
    assert_same_detections(expected, out_b[0], out_s[0], out_l[0])
    assert out_l.shape == (1, 1000) and (out_l[0] == 0).sum() == 1000 - len(expected)


def test_graph_rejects_size_not_divisible():
    model = tiny_model(tiny_cfg("ATSS"))
    with pytest.raises(ValueError, match="SIZE_DIVISIBILITY"):
        DenseDetectorGraph(model, (100, 160))
    graph = DenseDetectorGraph(model, HW)
    with pytest.raises(ValueError, match="built for"):
        graph(torch.zeros(1, 3, 64, 64))
