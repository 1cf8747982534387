"""The shared assignment machinery: select_candidates, resolve_conflicts, centers_inside and
assign_batch, against plain-Python references."""
import itertools

import torch

from maskrcnn_benchmark.modeling.assigners import (ATSSAssigner, BaseAssigner,
                                                   Predictions, assign_batch)
from maskrcnn_benchmark.modeling.assigners.base import (centers_inside, resolve_conflicts,
                                                        select_candidates)
from maskrcnn_benchmark.structures.bounding_box import BoxList


def _grid(n, stride, size):
    c = [(i + 0.5) * stride for i in range(n)]
    return torch.tensor([[x - size / 2, y - size / 2, x + size / 2, y + size / 2]
                         for y in c for x in c])


def test_select_candidates_matches_sorted_distances():
    levels = [_grid(6, 8.0, 16.0), _grid(3, 16.0, 32.0)]
    gt_centers = torch.tensor([[10.0, 13.0], [40.0, 7.0], [25.0, 25.0]])
    for chunk in (1 << 20, 7):  # the chunked search gives the same answer
        idx = select_candidates(levels, gt_centers, k=4, chunk_elements=chunk)
        assert idx.shape == (3, 4 + 4)
        start = 0
        for lvl, anchors in enumerate(levels):
            cx = ((anchors[:, 0] + anchors[:, 2]) / 2).tolist()
            cy = ((anchors[:, 1] + anchors[:, 3]) / 2).tolist()
            for g, (gx, gy) in enumerate(gt_centers.tolist()):
                d = [(gx - x) ** 2 + (gy - y) ** 2 for x, y in zip(cx, cy)]
                got = (idx[g, 4 * lvl:4 * lvl + 4] - start).tolist()
                assert sorted(d[i] for i in got) == sorted(d)[:4]
                assert [d[i] for i in got] == sorted(d[i] for i in got)  # nearest first
            start += anchors.shape[0]
    # a level with fewer anchors than k contributes all of them
    small = select_candidates([_grid(1, 8.0, 16.0)], gt_centers, k=4)
    assert small.tolist() == [[0], [0], [0]]


def test_resolve_conflicts_highest_score_then_lowest_gt():
    cand_idx = torch.tensor([[0, 1, 2], [2, 3, 1], [1, 4, 0]])
    is_pos = torch.tensor([[True, True, True], [True, True, False], [True, False, True]])
    score = torch.tensor([[0.5, 0.7, 0.2], [0.2, 0.9, 0.8], [0.7, 0.1, 0.6]])
    # image 1 of the batch: the same scene with the GTs in reverse order
    gt_inds, won = resolve_conflicts(torch.stack([cand_idx, cand_idx.flip(0)]),
                                     torch.stack([is_pos, is_pos.flip(0)]),
                                     torch.stack([score, score.flip(0)]), num_anchors=6)
    assert gt_inds.shape == (2, 6) and won.shape == (2, 3, 3)
    # reference: per anchor, the positive pair of highest score, ties to the lowest GT
    ref = [-1] * 6
    best = [None] * 6
    for g, k in itertools.product(range(3), range(3)):
        if is_pos[g, k]:
            a, s = int(cand_idx[g, k]), float(score[g, k])
            if best[a] is None or s > best[a]:
                best[a], ref[a] = s, g
    # anchor 0: 0.5 (GT 0) < 0.6 (GT 2); anchor 1: tie 0.7 -> GT 0; anchor 2: tie 0.2 -> GT 0
    assert gt_inds[0].tolist() == ref == [2, 0, 0, 1, -1, -1]
    # reversed GT order: the anchor 1 / 2 ties now go to (new) GT 1 = old GT 1 / GT 1 ...
    ref_rev = [-1] * 6
    best = [None] * 6
    for g, k in itertools.product(range(3), range(3)):
        if is_pos.flip(0)[g, k]:
            a, s = int(cand_idx.flip(0)[g, k]), float(score.flip(0)[g, k])
            if best[a] is None or s > best[a]:
                best[a], ref_rev[a] = s, g
    assert gt_inds[1].tolist() == ref_rev
    for i, (c, w) in enumerate(zip([cand_idx, cand_idx.flip(0)], won)):
        pair_gt, pair_k = w.nonzero(as_tuple=True)
        assert sorted(c[pair_gt, pair_k].tolist()) == [0, 1, 2, 3]
        assert all(gt_inds[i, c[g, k]] == g for g, k in zip(pair_gt.tolist(), pair_k.tolist()))


def test_centers_inside_margin():
    pts = torch.tensor([[[5.0, 5.0], [0.005, 5.0], [10.0, 10.0]]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert centers_inside(pts, gt).tolist() == [[True, False, False]]
    assert centers_inside(pts, gt, margin=0.0).tolist() == [[True, True, False]]


class _Recorder(BaseAssigner):
    """Every anchor positive for GT 0; records what it was given."""

    def __init__(self):
        self.calls = []

    def _assign(self, levels, anchors, gt, predictions):
        self.calls.append(predictions)
        b, n = gt.boxes.shape[0], anchors.shape[0]
        gt_inds = torch.where(gt.valid[:, :1], 0, -1).expand(b, n)   # GT 0 where it exists
        return gt_inds, torch.full((b, n), 0.5), None


def _target(boxes, labels, size=(32, 32)):
    t = BoxList(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), size)
    t.add_field("labels", torch.tensor(labels, dtype=torch.int64))
    return t


def test_assign_batch_stacks_images_and_slices_predictions():
    levels = [_grid(4, 8.0, 16.0), _grid(2, 16.0, 32.0)]
    n = 20
    targets = [_target([[0, 0, 16, 16], [4, 4, 30, 30]], [2, 1]), _target([], [])]
    rec = _Recorder()
    boxes = torch.rand(2, n, 4)
    scores = torch.rand(2, n, 3)
    out = assign_batch(rec, levels, targets, Predictions(boxes=boxes, scores=scores))
    assert out.labels.shape == (2, n) and out.matched_gt.shape == (2, n, 4)
    assert out.labels[0].tolist() == [2] * n and out.labels[1].tolist() == [0] * n  # empty image
    assert torch.equal(out.matched_gt[0], torch.tensor([[0.0, 0, 16, 16]]).expand(n, 4))
    assert out.matched_gt[1].abs().sum() == 0 and not out.pos[1].any()
    assert out.quality[0].tolist() == [0.5] * n and out.quality[1].abs().sum() == 0
    # one batched call with the batch's predictions
    (p,) = rec.calls
    assert torch.equal(p.boxes, boxes) and torch.equal(p.scores, scores)
    # the GT statistics: GT 1 of image 0 got no positive; its size is sqrt(26 * 26)
    assert out.stats["num_gt"].item() == 2 and out.stats["num_gt_unmatched"].item() == 1
    assert out.stats["min_unmatched_size"].item() == 26.0


def test_assign_batch_equals_per_image_calls():
    levels = [_grid(8, 8.0, 32.0), _grid(4, 16.0, 64.0)]
    targets = [_target([[3, 5, 40, 50], [30, 20, 62, 60]], [1, 3]), _target([[10, 30, 34, 62]], [2])]
    a = ATSSAssigner(topk=3)
    out = assign_batch(a, levels, targets)
    for i, t in enumerate(targets):
        ref = a(levels, t.bbox, t.get_field("labels"))
        assert torch.equal(out.labels[i], ref.labels) and torch.equal(out.pos[i], ref.pos_mask)
        assert torch.equal(out.quality[i], ref.quality)
        assert torch.equal(out.matched_gt[i][ref.pos_mask], t.bbox[ref.gt_inds[ref.pos_mask]])
