"""DynamicATSSAssigner against a plain-Python loop reference written from the algorithm text."""
import math
import statistics

import pytest
import torch

from maskrcnn_benchmark.modeling.assigners import ATSSAssigner, DynamicATSSAssigner

STRIDES = (8, 16, 32, 64, 128)
IMAGE_HW = (256, 320)


# ---- scenes (same construction as test_atss_assigner.py) ------------------------------------
def make_anchors(image_hw=IMAGE_HW, strides=STRIDES, dtype=torch.float64):
    """One square anchor of size 8 x stride per location, centred at ((i + 0.5) s, (j + 0.5) s)."""
    h, w = image_hw
    levels = []
    for s in strides:
        ys, xs = torch.meshgrid(torch.arange(math.ceil(h / s), dtype=dtype),
                                torch.arange(math.ceil(w / s), dtype=dtype), indexing="ij")
        cx, cy = ((xs + 0.5) * s).reshape(-1), ((ys + 0.5) * s).reshape(-1)
        half = 4.0 * s
        levels.append(torch.stack((cx - half, cy - half, cx + half, cy + half), dim=1))
    return levels


def make_gts(num, seed, dtype=torch.float64):
    """Random GTs plus a nested box, an identical duplicate and a sub-stride box."""
    g = torch.Generator().manual_seed(seed)
    h, w = IMAGE_HW
    wh = torch.rand(num, 2, generator=g, dtype=dtype) * torch.tensor([w * 0.6, h * 0.6],
                                                                     dtype=dtype) + 4
    xy = torch.rand(num, 2, generator=g, dtype=dtype) * torch.tensor([w, h], dtype=dtype) - wh / 2
    boxes = torch.cat((xy, xy + wh), dim=1)
    if num >= 2:
        b = boxes[0]
        nested = torch.stack((b[0] + 0.2 * (b[2] - b[0]), b[1] + 0.3 * (b[3] - b[1]),
                              b[2] - 0.25 * (b[2] - b[0]), b[3] - 0.15 * (b[3] - b[1])))
        tiny = torch.tensor([60.7, 90.2, 65.1, 93.3], dtype=dtype)
        boxes = torch.cat((boxes, nested[None], boxes[1:2], tiny[None]), dim=0)
    return boxes, torch.randint(1, 6, (boxes.shape[0],), generator=g)


def perturb(anchors, seed, scale=0.3):
    """Predicted boxes: anchors with each side moved by up to ``scale`` x the anchor size."""
    g = torch.Generator().manual_seed(seed)
    size = (anchors[:, 2:] - anchors[:, :2]).repeat(1, 2)
    noise = (torch.rand(anchors.shape, generator=g, dtype=anchors.dtype) - 0.5) * 2 * scale * size
    noise[:, 2:] = noise[:, 2:].clamp(min=-0.3 * size[:, 2:])  # keep x2 > x1, y2 > y1
    noise[:, :2] = noise[:, :2].clamp(max=0.3 * size[:, :2])
    return anchors + noise


# ---- plain-Python reference ----------------------------------------------------------------
def iou_py(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-7)


def center_py(a):
    return ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2)


def dynamic_atss_ref(levels, preds, gts, labels, k):
    anchors = [a for level in levels for a in level]
    best = [None] * len(anchors)  # (score, gt, P)
    for g, gt in enumerate(gts):
        gc = center_py(gt)
        cands, start = [], 0
        for level in levels:
            order = sorted(range(len(level)), key=lambda i: (math.dist(center_py(level[i]), gc), i))
            cands += [start + i for i in order[:min(k, len(level))]]
            start += len(level)
        p = [iou_py(preds[c], gt) for c in cands]
        q = [iou_py(anchors[c], gt) for c in cands]
        t = statistics.mean(p) + statistics.mean(q) + statistics.stdev(p) + statistics.stdev(q)
        for c, pc, qc in zip(cands, p, q):
            x, y = center_py(anchors[c])
            inside = min(x - gt[0], y - gt[1], gt[2] - x, gt[3] - y) > 0.01
            if pc + qc >= t and inside and (best[c] is None or pc + qc > best[c][0]):
                best[c] = (pc + qc, g, pc)
    gt_inds = [b[1] if b else -1 for b in best]
    lab = [labels[b[1]] if b else 0 for b in best]
    quality = [b[2] if b else 0.0 for b in best]
    return lab, gt_inds, quality


def check(result, ref):
    lab, gt_inds, q = ref
    assert result.gt_inds.dtype == torch.int64 and result.labels.dtype == torch.int64
    assert result.gt_inds.tolist() == gt_inds
    assert result.labels.tolist() == lab
    torch.testing.assert_close(result.quality, torch.tensor(q, dtype=result.quality.dtype),
                               rtol=0, atol=1e-12)


# ---- tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("num_gt,seed", [(1, 0), (5, 1), (30, 2)])
def test_dynamic_atss_matches_reference(num_gt, seed):
    levels = make_anchors()
    anchors = torch.cat(levels)
    preds = perturb(anchors, seed + 100)
    gts, labels = make_gts(num_gt, seed)
    res = DynamicATSSAssigner(topk=9)(levels, gts, labels, predictions=preds)
    ref = dynamic_atss_ref([lvl.tolist() for lvl in levels], preds.tolist(), gts.tolist(),
                           labels.tolist(), k=9)
    check(res, ref)
    assert res.num_pos > 0
    # quality is the IoU of the prediction (not the anchor) with the assigned GT
    pos = res.pos_mask
    assert not torch.equal(res.quality[pos],
                           ATSSAssigner()(levels, gts, labels).quality[pos])


def test_identical_gts_lowest_index_wins():
    levels = make_anchors()
    preds = perturb(torch.cat(levels), 5)
    gts, _ = make_gts(3, 9)
    gts = torch.cat((gts, gts[1:2]))
    labels = torch.arange(1, gts.shape[0] + 1)
    res = DynamicATSSAssigner()(levels, gts, labels, predictions=preds)
    check(res, dynamic_atss_ref([lvl.tolist() for lvl in levels], preds.tolist(), gts.tolist(),
                                labels.tolist(), k=9))
    assert (res.gt_inds == 1).any() and not (res.gt_inds == gts.shape[0] - 1).any()


@pytest.mark.parametrize("num_gt,seed", [(1, 3), (30, 4)])
def test_predictions_equal_to_anchors_reduce_to_atss(num_gt, seed):
    levels = make_anchors()
    gts, labels = make_gts(num_gt, seed)
    dyn = DynamicATSSAssigner()(levels, gts, labels, predictions=torch.cat(levels))
    atss = ATSSAssigner()(levels, gts, labels)
    assert torch.equal(dyn.gt_inds, atss.gt_inds)
    assert torch.equal(dyn.labels, atss.labels)
    torch.testing.assert_close(dyn.quality, atss.quality, rtol=0, atol=1e-12)


def test_float32_agrees_with_reference():
    levels = make_anchors(dtype=torch.float32)
    preds = perturb(torch.cat(levels), 21)
    gts, labels = make_gts(5, 22, dtype=torch.float32)
    res = DynamicATSSAssigner()(levels, gts, labels, predictions=preds)
    lab, gt_inds, q = dynamic_atss_ref([lvl.tolist() for lvl in levels], preds.tolist(),
                                       gts.tolist(), labels.tolist(), k=9)
    assert res.gt_inds.tolist() == gt_inds and res.labels.tolist() == lab
    torch.testing.assert_close(res.quality, torch.tensor(q, dtype=torch.float32))


def test_empty_gt_all_background():
    levels = make_anchors(dtype=torch.float32)
    n = sum(len(lvl) for lvl in levels)
    res = DynamicATSSAssigner()(levels, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                                predictions=torch.cat(levels))
    assert res.labels.tolist() == [0] * n and res.gt_inds.tolist() == [-1] * n
    assert res.quality.tolist() == [0.0] * n


def test_missing_or_bad_pred_boxes_raise():
    levels = make_anchors()
    gts, labels = make_gts(2, 0)
    with pytest.raises(ValueError, match="pred_boxes"):
        DynamicATSSAssigner()(levels, gts, labels)
    with pytest.raises(ValueError, match="pred_boxes"):
        DynamicATSSAssigner()(levels, gts, labels, predictions=torch.zeros(3, 4))


def test_pred_boxes_detached_and_no_grad():
    levels = make_anchors()
    preds = perturb(torch.cat(levels), 1).requires_grad_(True)
    gts, labels = make_gts(4, 1)
    res = DynamicATSSAssigner()(levels, gts, labels, predictions=preds)
    assert not res.quality.requires_grad and res.num_pos > 0


@pytest.mark.parametrize("kind,seed", [("random", 0), ("float", 1), ("crowded", 2), ("duplicates", 3),
                                       ("integer", 4), ("tiny", 5)])
def test_release_geometry_identical_to_release_prepare_targets(kind, seed):
    """MODEL.LEGACY_PLUS_ONE: DynamicATSSAssigner with the release margin on the release anchors gives the
    release's Dynamic ATSS prepare_targets anchor for anchor (P, Q with "+1" IoUs = continuous IoUs)."""
    from maskrcnn_benchmark.modeling.assigners.base import center_margin
    import release_reference as ref

    ours, theirs = ref.release_levels()
    anchors = torch.cat(theirs)
    g = torch.Generator().manual_seed(seed + 50)
    # predicted boxes (inclusive) near the anchors, on a 1/64 px grid: exact in both frames
    jitter = (torch.rand(anchors.shape[0], 4, generator=g) - 0.5) * 0.4 * (anchors[:, 2:3] - anchors[:, 0:1])
    preds = ((anchors + jitter) * 64).round() / 64
    gts, labels = ref.scene(kind, seed)
    res = DynamicATSSAssigner(topk=9, center_margin=center_margin(True))(
        ours, ref.to_continuous(gts), labels, predictions=ref.to_continuous(preds))
    lab, gt_idx, q = ref.prepare_targets(theirs, gts, labels, topk=9, pred_boxes=preds)
    assert res.labels.tolist() == lab.tolist()
    pos = lab > 0
    assert res.gt_inds[pos].tolist() == gt_idx[pos].tolist()
    torch.testing.assert_close(res.quality[pos], q[pos], rtol=1e-6, atol=1e-7)
    if kind != "tiny":
        assert pos.sum() > 0
