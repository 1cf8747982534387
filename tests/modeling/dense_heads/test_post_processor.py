"""DensePostProcessor (modeling/dense_heads/base.py): the batched, fixed-shape post-processing
(one NMS call per batch, one host copy) against a plain per-image re-derivation in Python, and the
independence of each image's detections from the rest of the batch."""
import itertools

import pytest
import torch

from plain_boxes import iou
from maskrcnn_benchmark.modeling.dense_heads.base import (DenseCandidates, DensePostProcessor,
                                                          DensePrediction, clip_boxes_to_images)

C = 3
LEVELS = (40, 12, 5)
IMAGE_SIZES = [(50, 70), (64, 48), (40, 40), (56, 60)]  # (h, w)


def _prediction(seed, image_sizes=IMAGE_SIZES, threshold=0.3, levels=(0.0, 0.2, 0.35, 0.5, 0.65, 0.8)):
    """Random scores / boxes: boxes around a few centres per image (so NMS suppresses), some
    partly or wholly outside the image (clipped, some empty). ``levels``: None for continuous
    scores, else scores drawn from these values (ties)."""
    g = torch.Generator().manual_seed(seed)
    b, n = len(image_sizes), sum(LEVELS)
    if levels is None:
        scores = torch.rand(b, n, C, generator=g)
    else:
        scores = torch.tensor(levels)[torch.randint(len(levels), (b, n, C), generator=g)]
    wh = torch.tensor([[w, h] for h, w in image_sizes], dtype=torch.float32)[:, None]
    centres = torch.rand(b, 4, 2, generator=g) * wh * 1.3 - 0.15 * wh
    pick = torch.randint(4, (b, n), generator=g)
    xy = centres.gather(1, pick[..., None].expand(-1, -1, 2)) + torch.randn(b, n, 2, generator=g) * 3
    size = torch.rand(b, n, 2, generator=g) * 20 + 2
    boxes = torch.cat([xy - size / 2, xy + size / 2], dim=2)
    boxes[:, :3] = torch.tensor([[-30.0, -30.0, -5.0, -5.0]])  # outside every image: empty once clipped
    return DensePrediction(scores, boxes, scores > threshold, LEVELS)


def _reference(pred, i, image_hw, pre_nms_top_n, nms_thresh, detections_per_img):
    """One image in plain Python: per level the ``pre_nms_top_n`` best candidates (reported in
    (prior, class) order), clipped, empty dropped; greedy per-class NMS in decreasing score
    (ties: that order); the ``detections_per_img`` best. Returns [(box, score, label)]."""
    h, w = image_hw
    scores, boxes, mask = pred.scores[i].tolist(), pred.boxes[i].tolist(), pred.candidate_mask[i].tolist()
    cands, start = [], 0
    for n in pred.level_sizes:
        level = [(scores[p][c], p, c) for p in range(start, start + n) for c in range(C) if mask[p][c]]
        level = sorted(level, key=lambda t: -t[0])[:pre_nms_top_n]
        for s, p, c in sorted(level, key=lambda t: (t[1], t[2])):
            x1, y1, x2, y2 = boxes[p]
            box = [min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)]
            if box[2] > box[0] and box[3] > box[1]:
                cands.append((box, s, c + 1))
        start += n
    kept = []
    for j in sorted(range(len(cands)), key=lambda j: -cands[j][1]):  # stable: ties in candidate order
        if all(cands[k][2] != cands[j][2] or iou(cands[k][0], cands[j][0]) <= nms_thresh for k in kept):
            kept.append(j)
    return [cands[j] for j in kept[:detections_per_img]]


def _check_against_reference(dets, pred, image_sizes, post):
    total = 0
    for i, (det, hw) in enumerate(zip(dets, image_sizes)):
        ref = _reference(pred, i, hw, post.pre_nms_top_n, post.nms_thresh, post.detections_per_img)
        assert det.size == (hw[1], hw[0])
        assert det.bbox.tolist() == [r[0] for r in ref], f"image {i}"
        assert det.get_field("scores").tolist() == [r[1] for r in ref], f"image {i}"
        assert det.get_field("labels").tolist() == [r[2] for r in ref], f"image {i}"
        assert det.get_field("labels").dtype == torch.int64 and det.bbox.device.type == "cpu"
        total += len(ref)
    return total


@pytest.mark.parametrize("seed, pre_nms_top_n, nms_thresh, detections_per_img", [
    (0, 1000, 0.5, 100),   # no cut, no cap
    (1, 7, 0.5, 100),      # per-level top-k cuts every level
    (2, 1000, 0.3, 6),     # max-detections cap
    (3, 20, 0.6, 10),
])
def test_continuous_scores_match_the_per_image_rederivation(seed, pre_nms_top_n, nms_thresh, detections_per_img):
    pred = _prediction(seed, levels=None)
    post = DensePostProcessor(pre_nms_top_n, nms_thresh, detections_per_img)
    dets = post(pred, IMAGE_SIZES)
    assert _check_against_reference(dets, pred, IMAGE_SIZES, post) > 0


@pytest.mark.parametrize("seed, nms_thresh, detections_per_img", [(4, 0.5, 100), (5, 0.3, 5), (6, 0.7, 13)])
def test_tied_scores_match_the_per_image_rederivation(seed, nms_thresh, detections_per_img):
    """Scores from six values: ties decide NMS and the cap; both follow (prior, class) order.
    (No per-level cut here: which of several tied candidates a top-k cut keeps is unspecified.)"""
    pred = _prediction(seed)
    post = DensePostProcessor(10 ** 6, nms_thresh, detections_per_img)
    dets = post(pred, IMAGE_SIZES)
    assert _check_against_reference(dets, pred, IMAGE_SIZES, post) > 0
    assert any(len(set(d.get_field("scores").tolist())) < len(d) for d in dets)  # ties were reported


def test_images_without_candidates_or_with_only_empty_boxes():
    pred = _prediction(7, levels=None)
    pred.candidate_mask[1] = False                          # nothing above the threshold
    pred.boxes[2] = torch.tensor([100.0, 100.0, 120.0, 130.0])  # every box outside the image
    post = DensePostProcessor(50, 0.5, 100)
    dets = post(pred, IMAGE_SIZES)
    assert len(dets[1]) == 0 and len(dets[2]) == 0 and len(dets[0]) > 0 and len(dets[3]) > 0
    assert dets[1].bbox.shape == (0, 4) and dets[1].get_field("labels").dtype == torch.int64
    _check_against_reference(dets, pred, IMAGE_SIZES, post)


@pytest.mark.parametrize("levels", [None, (0.0, 0.4, 0.6, 0.9)], ids=["continuous", "ties"])
def test_an_image_does_not_depend_on_the_rest_of_the_batch(levels):
    """Each image alone, in the batch, and beside an exact copy of itself (a copy must not
    suppress it: NMS groups are per image) gives the same detections, bit for bit."""
    pred = _prediction(8, levels=levels)
    post = DensePostProcessor(15, 0.5, 9)
    batch = post(pred, IMAGE_SIZES)
    for i, hw in enumerate(IMAGE_SIZES):
        one = DensePrediction(pred.scores[i:i + 1], pred.boxes[i:i + 1], pred.candidate_mask[i:i + 1], LEVELS)
        twice = DensePrediction(*(t[[i, i]] for t in (pred.scores, pred.boxes, pred.candidate_mask)), LEVELS)
        for det in itertools.chain(post(one, [hw]), post(twice, [hw, hw])):
            assert torch.equal(det.bbox, batch[i].bbox) and len(det) > 0
            assert torch.equal(det.get_field("scores"), batch[i].get_field("scores"))
            assert torch.equal(det.get_field("labels"), batch[i].get_field("labels"))


def test_fixed_size_detections_and_one_nms_call(monkeypatch):
    """``select`` gives [B, K] tensors with the detections first and label-0 padding after them,
    from one NMS call for the whole batch."""
    pred = _prediction(9, levels=None)
    post = DensePostProcessor(10, 0.5, 30)
    calls = []
    nms = post.nms_keep_mask
    monkeypatch.setattr(post, "nms_keep_mask", lambda *a: calls.append(a[0].shape) or nms(*a))
    cands = post.candidates(pred, IMAGE_SIZES)
    m = sum(min(10, n * C) for n in LEVELS)
    assert cands.scores.shape == (4, m) and cands.boxes.shape == (4, m, 4) and cands.labels.shape == (4, m)
    out = post.select(cands)
    assert calls == [(4 * m, 4)]
    assert out.boxes.shape == (4, 30, 4) and out.scores.shape == (4, 30) and out.labels.shape == (4, 30)
    found = out.labels > 0
    assert torch.equal(found, found.cummin(dim=1).values)  # detections form a prefix
    assert (out.scores[~found] == 0).all() and (out.boxes[~found] == 0).all()
    assert [len(d) for d in out.to_boxlists()] == found.sum(1).tolist()


def test_candidates_of_several_batches_concatenate_with_empty_padding():
    post = DensePostProcessor(1000, 0.5, 100)
    full = _prediction(10)
    small = DensePrediction(*(t[:, :LEVELS[0] + LEVELS[1]] for t in (full.scores, full.boxes, full.candidate_mask)),
                            LEVELS[:2])
    big = _prediction(11, IMAGE_SIZES[:2])
    parts = [post.candidates(small, IMAGE_SIZES), post.candidates(big, IMAGE_SIZES[:2])]
    cat = DenseCandidates.cat(parts)
    assert cat.scores.shape == (6, parts[1].scores.shape[1]) and cat.image_sizes == IMAGE_SIZES + IMAGE_SIZES[:2]
    assert (cat.scores[:4, parts[0].scores.shape[1]:] == -1).all()
    together = post.select(cat).to_boxlists()
    apart = post.select(parts[0]).to_boxlists() + post.select(parts[1]).to_boxlists()
    for a, b in zip(together, apart):
        assert torch.equal(a.bbox, b.bbox) and torch.equal(a.get_field("scores"), b.get_field("scores"))
        assert a.size == b.size
    with pytest.raises(ValueError, match="num_classes"):
        DenseCandidates.cat([])


def test_clip_boxes_to_images():
    boxes = torch.tensor([[[-5.0, 2.0, 80.0, 90.0]], [[10.0, -1.0, 20.0, 30.0]]])
    out, nonempty = clip_boxes_to_images(boxes, [(50, 70), (25, 15)])
    assert out.tolist() == [[[0.0, 2.0, 70.0, 50.0]], [[10.0, 0.0, 15.0, 25.0]]]
    assert nonempty.tolist() == [[True], [True]]
    # the releases' rule (hand values): x1 to [0, w - 1], x2 to [1, w]; a box left of the image is a
    # 1 px sliver that survives (x2 >= x1), continuously it is empty
    left = torch.tensor([[[-9.0, 5.0, -2.0, 8.0]]])
    out, nonempty = clip_boxes_to_images(left, [(20, 30)], plus_one=True)
    assert out.tolist() == [[[0.0, 5.0, 1.0, 8.0]]] and nonempty.tolist() == [[True]]
    out, nonempty = clip_boxes_to_images(left, [(20, 30)])
    assert out.tolist() == [[[0.0, 5.0, 0.0, 8.0]]] and nonempty.tolist() == [[False]]
    with pytest.raises(ValueError, match="2 image sizes for a batch of 1"):
        clip_boxes_to_images(boxes[:1], [(1, 1), (2, 2)])
