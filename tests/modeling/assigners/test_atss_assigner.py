"""The ATSS-release assigners (ATSSAssigner and the POSITIVE_TYPE factory: SSC / TOPK / IoU)
against plain-Python loop references written from the algorithm text."""
import math
import statistics

import pytest
import torch

from maskrcnn_benchmark.modeling.assigners import (ATSSAssigner, AssignResult, MaxIoUAssigner,
                                                   SSCAssigner, TopKAssigner,
                                                   build_positive_type_assigner)

STRIDES = (8, 16, 32, 64, 128)
IMAGE_HW = (256, 320)


def _ops_built() -> bool:
    try:
        from maskrcnn_benchmark.layers._ops import load_ops
        load_ops()
        return True
    except ImportError:
        return False


needs_ops = pytest.mark.skipif(not _ops_built(), reason="maskrcnn_benchmark._C not built")


# ---- scenes ---------------------------------------------------------------------------------
def make_anchors(image_hw=IMAGE_HW, strides=STRIDES, ratios=(1.0,), dtype=torch.float64):
    """Per-level anchors: size 8 x stride, centred at ((i + 0.5) s, (j + 0.5) s), A = len(ratios)
    per location, location-major (the A anchors of one location are consecutive)."""
    h, w = image_hw
    levels = []
    for s in strides:
        ys, xs = torch.meshgrid(torch.arange(math.ceil(h / s), dtype=dtype),
                                torch.arange(math.ceil(w / s), dtype=dtype), indexing="ij")
        cx, cy = ((xs + 0.5) * s).reshape(-1, 1), ((ys + 0.5) * s).reshape(-1, 1)
        size = 8.0 * s
        hw = torch.tensor([[size / math.sqrt(r) / 2, size * math.sqrt(r) / 2] for r in ratios],
                          dtype=dtype)                                   # [A, 2] (half w, half h)
        boxes = torch.stack((cx - hw[:, 0], cy - hw[:, 1], cx + hw[:, 0], cy + hw[:, 1]), dim=-1)
        levels.append(boxes.reshape(-1, 4))
    return levels


def make_gts(num, seed, image_hw=IMAGE_HW, dtype=torch.float64, special=True):
    """Random GTs (continuous coordinates) plus, when ``special``, a nested box, an identical
    duplicate and a box smaller than a stride."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    wh = torch.rand(num, 2, generator=g, dtype=dtype) * torch.tensor([w * 0.6, h * 0.6],
                                                                     dtype=dtype) + 4
    xy = torch.rand(num, 2, generator=g, dtype=dtype) * torch.tensor([w, h], dtype=dtype) - wh / 2
    boxes = torch.cat((xy, xy + wh), dim=1)
    if special and num >= 2:
        b = boxes[0]
        nested = torch.stack((b[0] + 0.23 * (b[2] - b[0]), b[1] + 0.17 * (b[3] - b[1]),
                              b[2] - 0.31 * (b[2] - b[0]), b[3] - 0.29 * (b[3] - b[1])))
        tiny = torch.tensor([101.3, 77.9, 104.6, 82.2], dtype=dtype)  # 3.3 x 4.3 px
        boxes = torch.cat((boxes, nested[None], boxes[1:2], tiny[None]), dim=0)
    labels = torch.randint(1, 6, (boxes.shape[0],), generator=g)
    return boxes, labels


# ---- plain-Python reference ----------------------------------------------------------------
def iou_py(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-7)


def center_py(a):
    return ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2)


def inside_py(pt, g):
    return min(pt[0] - g[0], pt[1] - g[1], g[2] - pt[0], g[3] - pt[1]) > 0.01


def stdev0(x):
    return statistics.stdev(x) if len(x) > 1 else 0.0


def candidates_py(levels, gt, k):
    """Per level, anchor indices sorted by centre distance to the GT centre, first min(k, n)."""
    gc = center_py(gt)
    out, start = [], 0
    for level in levels:
        d = [math.dist(center_py(a), gc) for a in level]
        order = sorted(range(len(level)), key=lambda i: (d[i], i))
        out += [start + i for i in order[:min(k, len(level))]]
        start += len(level)
    return out


def resolve_py(num_anchors, pos_scores):
    """pos_scores: list over GTs of {anchor: score}. Highest score wins, ties: lowest GT."""
    gt_inds = [-1] * num_anchors
    best = [None] * num_anchors
    for g, d in enumerate(pos_scores):
        for a, s in d.items():
            if best[a] is None or s > best[a]:
                best[a], gt_inds[a] = s, g
    return gt_inds


def result_py(gt_inds, labels, quality_of):
    lab = [labels[g] if g >= 0 else 0 for g in gt_inds]
    q = [quality_of(a, g) if g >= 0 else 0.0 for a, g in enumerate(gt_inds)]
    return lab, gt_inds, q


def atss_ref(levels, gts, labels, k, keep_best=False):
    anchors = [a for level in levels for a in level]
    pos = []
    for gt in gts:
        cands = candidates_py(levels, gt, k)
        ious = [iou_py(anchors[c], gt) for c in cands]
        thr = statistics.mean(ious) + stdev0(ious)
        inside = [inside_py(center_py(anchors[c]), gt) for c in cands]
        d = {c: i for c, i, ins in zip(cands, ious, inside) if i >= thr and ins}
        if keep_best and not d and any(inside):
            best = None
            for c, i, ins in zip(cands, ious, inside):
                if ins and (best is None or i > best[1]):
                    best = (c, i)
            d = {best[0]: best[1]}
        pos.append(d)
    gt_inds = resolve_py(len(anchors), pos)
    return result_py(gt_inds, labels, lambda a, g: iou_py(anchors[a], gts[g]))


def ssc_ref(levels, gts, labels, ranges):
    anchors, gt_inds = [], []
    for lvl, level in enumerate(levels):
        lo, hi = ranges[lvl]
        for a in level:
            anchors.append(a)
            x, y = center_py(a)
            best = None
            for g, gt in enumerate(gts):
                ltrb = (x - gt[0], y - gt[1], gt[2] - x, gt[3] - y)
                if min(ltrb) > 0.01 and lo <= max(ltrb) <= hi:
                    area = (gt[2] - gt[0]) * (gt[3] - gt[1])
                    if best is None or area < best[0]:
                        best = (area, g)
            gt_inds.append(best[1] if best else -1)
    return result_py(gt_inds, labels, lambda a, g: iou_py(anchors[a], gts[g]))


def topk_ref(levels, gts, labels, k):
    anchors = [a for level in levels for a in level]
    dist = [[math.dist(center_py(a), center_py(gt)) for a in anchors] for gt in gts]
    dmax = max(max(row) for row in dist)
    pos = []
    for g, gt in enumerate(gts):
        ious = [iou_py(a, gt) for a in anchors]
        score = [ious[i] - dist[g][i] / dmax / 1000 for i in range(len(anchors))]
        top = sorted(range(len(anchors)), key=lambda i: (-score[i], i))[:min(k, len(anchors))]
        pos.append({i: ious[i] for i in top if inside_py(center_py(anchors[i]), gt)})
    gt_inds = resolve_py(len(anchors), pos)
    return result_py(gt_inds, labels, lambda a, g: iou_py(anchors[a], gts[g]))


def iou_matcher_ref(levels, gts, labels, fg, bg):
    anchors = [a for level in levels for a in level]
    m = [[iou_py(a, gt) for gt in gts] for a in anchors]
    best_gt = [max(range(len(gts)), key=lambda g: (row[g], -g)) for row in m]
    state = []  # "pos" / "ign" / "bg"
    for a, row in enumerate(m):
        v = row[best_gt[a]]
        state.append("pos" if v >= fg else ("ign" if v >= bg else "bg"))
    for g in range(len(gts)):
        top = max(m[a][g] for a in range(len(anchors)))
        if top > 0:
            for a in range(len(anchors)):
                if m[a][g] == top:
                    state[a] = "pos"
    lab, gt_inds, q = [], [], []
    for a, s in enumerate(state):
        g = best_gt[a]
        if s == "pos" and not inside_py(center_py(anchors[a]), gts[g]):
            s = "ign"
        lab.append(labels[g] if s == "pos" else (-1 if s == "ign" else 0))
        gt_inds.append(g if s == "pos" else -1)
        q.append(m[a][g] if s == "pos" else 0.0)
    return lab, gt_inds, q


def check(result: AssignResult, ref, n):
    lab, gt_inds, q = ref
    assert result.labels.dtype == torch.int64 and result.gt_inds.dtype == torch.int64
    assert result.labels.shape == result.gt_inds.shape == result.quality.shape == (n,)
    assert result.gt_inds.tolist() == gt_inds
    assert result.labels.tolist() == lab
    torch.testing.assert_close(result.quality, torch.tensor(q, dtype=result.quality.dtype),
                               rtol=0, atol=1e-12)


def as_lists(levels, gts, labels):
    return [lvl.tolist() for lvl in levels], gts.tolist(), labels.tolist()


# ---- tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("num_gt,seed", [(1, 0), (5, 1), (30, 2)])
@pytest.mark.parametrize("keep_best", [False, True])
def test_atss_matches_reference(num_gt, seed, keep_best):
    levels = make_anchors()
    gts, labels = make_gts(num_gt, seed)
    res = ATSSAssigner(topk=9, keep_best_candidate=keep_best)(levels, gts, labels)
    ref = atss_ref(*as_lists(levels, gts, labels), k=9, keep_best=keep_best)
    check(res, ref, sum(len(lvl) for lvl in levels))
    assert res.num_pos > 0


def test_atss_identical_gts_lowest_index_wins():
    levels = make_anchors()
    gts, _ = make_gts(4, 7, special=False)
    gts = torch.cat((gts, gts[2:3], gts[2:3]))  # GTs 2, 4 and 5 identical
    labels = torch.tensor([1, 2, 3, 4, 5, 6])
    res = ATSSAssigner()(levels, gts, labels)
    check(res, atss_ref(*as_lists(levels, gts, labels), k=9), sum(len(lvl) for lvl in levels))
    assert (res.gt_inds == 2).any() and not (res.gt_inds == 4).any() and not (res.gt_inds == 5).any()


def test_atss_several_anchors_per_location():
    levels = make_anchors(strides=(16, 32, 64), ratios=(0.5, 1.0, 2.0))
    gts, labels = make_gts(6, 3)
    res = ATSSAssigner(topk=4, anchors_per_location=3)(levels, gts, labels)
    check(res, atss_ref(*as_lists(levels, gts, labels), k=12), sum(len(lvl) for lvl in levels))


def test_atss_float32_agrees_with_reference():
    levels = make_anchors(dtype=torch.float32)
    gts, labels = make_gts(5, 11, dtype=torch.float32)
    res = ATSSAssigner()(levels, gts, labels)
    lab, gt_inds, q = atss_ref(*as_lists(levels, gts, labels), k=9)
    assert res.gt_inds.tolist() == gt_inds and res.labels.tolist() == lab
    assert res.quality.dtype == torch.float32
    torch.testing.assert_close(res.quality, torch.tensor(q, dtype=torch.float32))


def test_level_with_fewer_anchors_than_topk():
    levels = make_anchors(image_hw=(100, 120), strides=(8, 64, 128))  # 2 and 1 anchors
    assert levels[1].shape[0] == 4 and levels[2].shape[0] == 1
    gts, labels = make_gts(5, 4, image_hw=(100, 120))
    res = ATSSAssigner(topk=9)(levels, gts, labels)
    check(res, atss_ref(*as_lists(levels, gts, labels), k=9), sum(len(lvl) for lvl in levels))


def _hazard_scene():
    """Candidates' IoUs {x1, x2, 0, 0} with x1 ~ x2: mean + std > max, so plain ATSS gives the
    GT no positive."""
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    level0 = torch.tensor([[2.0, 2.0, 12.0, 12.0],      # centre (7, 7), IoU 64/136
                           [-2.5, -2.0, 8.0, 8.0]],     # centre (2.75, 3), IoU 64/141
                          dtype=torch.float64)
    level1 = torch.tensor([[100.0, 100.0, 110.0, 110.0], [200.0, 200.0, 210.0, 210.0]],
                          dtype=torch.float64)
    return [level0, level1], gt, torch.tensor([3])


def test_keep_best_candidate_fixes_hazard():
    levels, gt, labels = _hazard_scene()
    plain = ATSSAssigner(topk=2)(levels, gt, labels)
    assert plain.num_pos == 0
    fixed = ATSSAssigner(topk=2, keep_best_candidate=True)(levels, gt, labels)
    assert fixed.gt_inds.tolist() == [0, -1, -1, -1]
    assert fixed.labels.tolist() == [3, 0, 0, 0]
    torch.testing.assert_close(fixed.quality,
                               torch.tensor([64 / 136, 0, 0, 0], dtype=torch.float64))
    check(fixed, atss_ref(*as_lists(levels, gt, labels), k=2, keep_best=True), 4)


def test_tiny_gt_without_inside_candidate():
    levels = make_anchors()
    gt = torch.tensor([[9.0, 9.0, 11.0, 11.0]], dtype=torch.float64)  # no anchor centre inside
    for keep in (False, True):
        res = ATSSAssigner(keep_best_candidate=keep)(levels, gt, torch.tensor([1]))
        assert res.num_pos == 0 and not torch.isnan(res.quality).any()


@pytest.mark.parametrize("positive_type", ["ATSS", "SSC", "TOPK", "IoU"])
def test_empty_gt_all_background(positive_type):
    if positive_type in ("TOPK", "IoU") and not _ops_built():
        pytest.skip("maskrcnn_benchmark._C not built")
    levels = make_anchors(dtype=torch.float32)
    n = sum(len(lvl) for lvl in levels)
    res = build_positive_type_assigner(positive_type)(levels, torch.zeros(0, 4),
                                                            torch.zeros(0, dtype=torch.int64))
    assert res.labels.tolist() == [0] * n and res.gt_inds.tolist() == [-1] * n
    assert res.quality.tolist() == [0.0] * n and res.quality.dtype == torch.float32


@pytest.mark.parametrize("num_gt,seed", [(1, 5), (30, 6)])
def test_ssc_matches_reference(num_gt, seed):
    levels = make_anchors()
    gts, labels = make_gts(num_gt, seed)
    a = build_positive_type_assigner("SSC")
    assert isinstance(a, SSCAssigner)
    res = a(levels, gts, labels)
    check(res, ssc_ref(*as_lists(levels, gts, labels), a.scale_ranges),
          sum(len(lvl) for lvl in levels))


@needs_ops
@pytest.mark.parametrize("num_gt,seed", [(1, 8), (30, 9)])
def test_topk_matches_reference(num_gt, seed):
    levels = make_anchors()
    gts, labels = make_gts(num_gt, seed)
    a = build_positive_type_assigner("TOPK", topk=9)
    assert isinstance(a, TopKAssigner)
    res = a(levels, gts, labels)
    check(res, topk_ref(*as_lists(levels, gts, labels), k=9), sum(len(lvl) for lvl in levels))


@needs_ops
@pytest.mark.parametrize("num_gt,seed", [(1, 10), (30, 12)])
def test_iou_matcher_matches_reference(num_gt, seed):
    levels = make_anchors()
    gts, labels = make_gts(num_gt, seed)
    # a zero-area GT: best IoU 0, so it adds no low-quality match
    gts = torch.cat((gts, torch.tensor([[50.0, 50.0, 50.0, 60.0]], dtype=gts.dtype)))
    labels = torch.cat((labels, torch.tensor([2])))
    a = build_positive_type_assigner("IoU")
    assert isinstance(a, MaxIoUAssigner) and a.require_center_inside
    res = a(levels, gts, labels)
    ref = iou_matcher_ref(*as_lists(levels, gts, labels), fg=0.5, bg=0.4)
    check(res, ref, sum(len(lvl) for lvl in levels))
    assert (res.labels == -1).any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive_type"):
        build_positive_type_assigner("atss")
    levels = make_anchors()
    with pytest.raises(ValueError, match="gt_labels"):
        ATSSAssigner()(levels, torch.zeros(2, 4, dtype=torch.float64), torch.ones(3))
    with pytest.raises(ValueError, match="scale ranges"):
        build_positive_type_assigner("SSC", ssc_scale_ranges=((0, 64),))(
            levels, *make_gts(2, 0, special=False))


def test_runs_without_grad():
    levels = [lvl.clone().requires_grad_(True) for lvl in make_anchors()]
    gts, labels = make_gts(3, 13)
    res = ATSSAssigner()(levels, gts, labels)
    assert not res.quality.requires_grad


@needs_ops
def test_iou_thresholds_from_the_original_config_keys():
    """MODEL.ATSS.FG_IOU_THRESHOLD / BG_IOU_THRESHOLD (the original's keys) drive POSITIVE_TYPE IoU."""
    from maskrcnn_benchmark.config import cfg as default_cfg
    from maskrcnn_benchmark.modeling.assigners.atss import positive_type_assigner_from_config

    cfg = default_cfg.clone()
    cfg.MODEL.ATSS.POSITIVE_TYPE = "IoU"
    cfg.MODEL.ATSS.FG_IOU_THRESHOLD = 0.6
    cfg.MODEL.ATSS.BG_IOU_THRESHOLD = 0.3
    a = positive_type_assigner_from_config(cfg)
    assert isinstance(a, MaxIoUAssigner) and (a.fg_iou_threshold, a.bg_iou_threshold) == (0.6, 0.3)
    levels = make_anchors()
    gts, labels = make_gts(12, 5)
    res = a(levels, gts, labels)
    check(res, iou_matcher_ref(*as_lists(levels, gts, labels), fg=0.6, bg=0.3), sum(len(lvl) for lvl in levels))
    default = positive_type_assigner_from_config(default_cfg)
    assert not isinstance(default, MaxIoUAssigner)  # POSITIVE_TYPE ATSS by default


# ---- the releases' "+1" geometry (MODEL.LEGACY_PLUS_ONE) against their prepare_targets ------------
@pytest.mark.parametrize("kind,seed", [("random", 0), ("random", 1), ("float", 2), ("crowded", 3),
                                       ("duplicates", 4), ("integer", 5), ("integer", 6), ("tiny", 7)])
def test_atss_release_geometry_identical_to_release_prepare_targets(kind, seed):
    from maskrcnn_benchmark.modeling.assigners.base import center_margin
    import release_reference as ref

    ours, theirs = ref.release_levels(IMAGE_HW, STRIDES)
    gts, labels = ref.scene(kind, seed, IMAGE_HW)
    res = ATSSAssigner(topk=9, center_margin=center_margin(True))(ours, ref.to_continuous(gts), labels)
    lab, gt_idx, _ = ref.prepare_targets(theirs, gts, labels, topk=9)
    assert res.labels.tolist() == lab.tolist()
    pos = lab > 0
    assert res.gt_inds[pos].tolist() == gt_idx[pos].tolist()
    assert (res.gt_inds[~pos] == -1).all()
    if kind != "tiny":
        assert pos.sum() > 0
    # the project's own convention differs on these scenes (anchors 0.5 px apart, margin 0.01)
    if kind in ("random", "crowded"):
        plain = ATSSAssigner(topk=9)(make_anchors(dtype=torch.float32), ref.to_continuous(gts), labels)
        assert plain.labels.tolist() != lab.tolist()


def test_center_margin_is_the_release_test_in_continuous_coordinates():
    """Anchor centre value c (continuous c + 0.5), GT x1 = 0: the release's l = c - 0 > 0.01; here
    l = c + 0.5 > 0.51 -- e.g. c = 0.015625 passes both, c = 0 fails both, 0.25 px inside passes only
    the project's 0.01 margin."""
    from maskrcnn_benchmark.modeling.assigners.base import (CENTER_MARGIN, LEGACY_CENTER_MARGIN, center_margin,
                                                            centers_inside)

    assert center_margin(False) == CENTER_MARGIN == 0.01 and center_margin(True) == LEGACY_CENTER_MARGIN == 0.51
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    pts = torch.tensor([[0.015625 + 0.5, 5.0], [0.5, 5.0], [0.25, 5.0]])
    assert centers_inside(pts, gt.expand(3, 4), center_margin(True)).tolist() == [True, False, False]
    assert centers_inside(pts, gt.expand(3, 4), center_margin(False)).tolist() == [True, True, True]
