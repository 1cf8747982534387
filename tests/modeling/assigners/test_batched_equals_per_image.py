"""The batched, fixed-shape assignment (GTs padded to the batch's largest count) equals the plain
per-image rules of ``per_image_reference`` on random scenes, crowded scenes, duplicate GTs and
images without GT, for every assigner and option."""
import importlib.util
import os

import pytest
import torch

from maskrcnn_benchmark.modeling.anchor_generator import AnchorGenerator
from maskrcnn_benchmark.modeling.assigners import (POSITIVE_TYPES, DynamicATSSAssigner,
                                                   FCOSAssigner, MaxIoUAssigner, Predictions,
                                                   assign_batch, build_positive_type_assigner,
                                                   scale_ranges_from_sizes)
from maskrcnn_benchmark.modeling.point_generator import PointGenerator, points_as_boxes
from maskrcnn_benchmark.structures.bounding_box import BoxList

_spec = importlib.util.spec_from_file_location(
    "per_image_reference", os.path.join(os.path.dirname(__file__), "per_image_reference.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

IMAGE = 96
STRIDES = (8, 16, 32)
GRID = [(IMAGE // s, IMAGE // s) for s in STRIDES]
SSC_RANGES = ((-1.0, 24.0), (24.0, 48.0), (48.0, float("inf")))


def _boxes(g, n, lo=4.0, hi=60.0, region=(0.0, IMAGE)):
    xy = torch.rand(n, 2, generator=g) * (region[1] - region[0]) + region[0]
    wh = torch.rand(n, 2, generator=g) * (hi - lo) + lo
    return torch.cat([xy - wh / 2, xy + wh / 2], dim=1).clamp(0, IMAGE)


def _scene(kind, seed):
    """Per image (boxes [G, 4], labels [G]) for a batch of 4 images."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        counts = [int(c) for c in torch.randint(1, 9, (4,), generator=g)]
        boxes = [_boxes(g, c) for c in counts]
    elif kind == "crowded":  # dozens of overlapping boxes in one corner, plus small ones
        boxes = [_boxes(g, 40, 10.0, 40.0, (20.0, 50.0)), _boxes(g, 25, 2.0, 12.0),
                 _boxes(g, 3), _boxes(g, 30, 8.0, 30.0, (30.0, 60.0))]
    elif kind == "duplicates":
        b = _boxes(g, 3)
        boxes = [torch.cat([b, b, b[:1]]), _boxes(g, 2).repeat(2, 1), b[:1].repeat(4, 1), _boxes(g, 5)]
    else:  # images without GT beside images with GTs; the last batch has none at all
        boxes = [torch.zeros(0, 4), _boxes(g, 4), torch.zeros(0, 4), _boxes(g, 1)]
        if seed % 2:
            boxes = [torch.zeros(0, 4)] * 4
    labels = [torch.randint(1, 5, (b.shape[0],), generator=g) for b in boxes]
    return boxes, labels


def _targets(boxes, labels):
    out = []
    for b, lab in zip(boxes, labels):
        t = BoxList(b, (IMAGE, IMAGE))
        t.add_field("labels", lab)
        out.append(t)
    return out


def _anchors():
    return AnchorGenerator(sizes=(32, 64, 128), strides=STRIDES).grid_anchors(GRID)


def _points():
    return [points_as_boxes(p) for p in PointGenerator(STRIDES).grid_points(GRID)]


# (name, batched assigner, prior boxes, per-image reference, needs predictions)
CASES = [
    *[(f"positive_type={t}", build_positive_type_assigner(t, topk=4, ssc_scale_ranges=SSC_RANGES),
       _anchors,
       {"ATSS": lambda a, b, lab, p: ref.candidate_threshold(a, b, lab, 4),
        "TOPK": lambda a, b, lab, p: ref.topk_iou(a, b, lab, 4),
        "SSC": lambda a, b, lab, p: ref.fcos(a, b, lab, (1,) * 3, SSC_RANGES, margin=0.01,
                                             iou_quality=True),
        "IoU": lambda a, b, lab, p: ref.max_iou(a, b, lab, 0.5, 0.4, center_inside=True)}[t], False)
      for t in POSITIVE_TYPES],
    ("atss_keep_best", build_positive_type_assigner("ATSS", topk=4, keep_best_candidate=True),
     _anchors, lambda a, b, lab, p: ref.candidate_threshold(a, b, lab, 4, keep_best=True), False),
    ("dynamic_atss", DynamicATSSAssigner(topk=4), _anchors,
     lambda a, b, lab, p: ref.candidate_threshold(a, b, lab, 4, pred_boxes=p), True),
    ("retinanet_max_iou", MaxIoUAssigner(0.5, 0.4), _anchors,
     lambda a, b, lab, p: ref.max_iou(a, b, lab, 0.5, 0.4), False),
    ("fcos", FCOSAssigner(STRIDES, scale_ranges_from_sizes((24, 48))), _points,
     lambda a, b, lab, p: ref.fcos(a, b, lab, STRIDES, scale_ranges_from_sizes((24, 48))), False),
    ("fcos_center_sampling", FCOSAssigner(STRIDES, scale_ranges_from_sizes((24, 48)), 1.5),
     _points, lambda a, b, lab, p: ref.fcos(a, b, lab, STRIDES, scale_ranges_from_sizes((24, 48)),
                                            radius=1.5), False),
]


def test_cases_cover_every_positive_type():
    assert {c[0].split("=")[1] for c in CASES if c[0].startswith("positive_type=")} == set(POSITIVE_TYPES)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["random", "crowded", "duplicates", "empty"])
@pytest.mark.parametrize("name,assigner,priors,reference,needs_pred", CASES, ids=[c[0] for c in CASES])
def test_batched_assignment_equals_per_image(name, assigner, priors, reference, needs_pred, kind,
                                             seed):
    boxes, labels = _scene(kind, seed)
    levels = priors()
    n = sum(p.shape[0] for p in levels)
    g = torch.Generator().manual_seed(100 + seed)
    pred = None
    if needs_pred:  # predictions: the anchors moved by up to 8 px per side
        pred = torch.cat(levels)[None] + (torch.rand(4, n, 4, generator=g) - 0.5) * 16
    out = assign_batch(assigner, levels, _targets(boxes, labels),
                       Predictions(boxes=pred) if needs_pred else None)
    assert out.labels.shape == (4, n) and out.matched_gt.shape == (4, n, 4)
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        ref_labels, ref_gt, ref_q = reference(levels, b, lab, None if pred is None else pred[i])
        assert torch.equal(out.labels[i], ref_labels), f"image {i}"
        assert torch.equal(out.gt_inds[i], ref_gt), f"image {i}"
        assert torch.equal(out.pos[i], ref_gt >= 0)
        torch.testing.assert_close(out.quality[i], ref_q, rtol=0, atol=1e-6)
        pos = ref_gt >= 0
        assert torch.equal(out.matched_gt[i][pos], b[ref_gt[pos]])
        assert not out.matched_gt[i][~pos].any()
    # the GT statistics: real GTs, and those without a positive (from the reference)
    unmatched = [(b, set(range(b.shape[0])) - set(reference(levels, b, lab, None if pred is None
                                                            else pred[i])[1].tolist()))
                 for i, (b, lab) in enumerate(zip(boxes, labels))]
    assert out.stats["num_gt"].item() == sum(b.shape[0] for b in boxes)
    assert out.stats["num_gt_unmatched"].item() == sum(len(u) for _, u in unmatched)
    sizes = [float(((b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])).sqrt()) for b, u in unmatched for j in u]
    assert out.stats["min_unmatched_size"].item() == pytest.approx(min(sizes, default=float("inf")))
