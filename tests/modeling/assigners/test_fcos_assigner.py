import math

import pytest
import torch

from maskrcnn_benchmark.modeling.assigners import FCOSAssigner
from maskrcnn_benchmark.modeling.assigners.fcos import scale_ranges_from_sizes
from maskrcnn_benchmark.structures.box_ops import centerness as fcos_centerness
from maskrcnn_benchmark.modeling.point_generator import PointGenerator, points_as_boxes

STRIDES = (8, 16)
RANGES = ((-1.0, 16.0), (16.0, math.inf))


def _reference(points_per_level, gts, labels, radius):
    """FCOS / ATSS-release target rule, loop form."""
    out_labels, out_inds, out_q = [], [], []
    gts = gts.tolist()
    for level, pts in enumerate(points_per_level):
        lo, hi = RANGES[level]
        stride = STRIDES[level]
        for x, y in pts.tolist():
            best, best_area = -1, math.inf
            for j, (x1, y1, x2, y2) in enumerate(gts):
                l, t, r, b = x - x1, y - y1, x2 - x, y2 - y
                if radius > 0:
                    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                    rx1, ry1 = max(cx - radius * stride, x1), max(cy - radius * stride, y1)
                    rx2, ry2 = min(cx + radius * stride, x2), min(cy + radius * stride, y2)
                    inside = min(x - rx1, y - ry1, rx2 - x, ry2 - y) > 0
                else:
                    inside = min(l, t, r, b) > 0
                m = max(l, t, r, b)
                area = (x2 - x1) * (y2 - y1)
                if inside and lo <= m <= hi and area < best_area:
                    best, best_area = j, area
            if best >= 0:
                x1, y1, x2, y2 = gts[best]
                l, t, r, b = x - x1, y - y1, x2 - x, y2 - y
                out_q.append(math.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)))
                out_labels.append(int(labels[best]))
            else:
                out_q.append(0.0)
                out_labels.append(0)
            out_inds.append(best)
    return out_labels, out_inds, out_q


@pytest.mark.parametrize("radius", [0.0, 1.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_loop_reference(radius, seed):
    g = torch.Generator().manual_seed(seed)
    points = PointGenerator(STRIDES).grid_points([(6, 6), (3, 3)])
    xy = torch.rand(5, 2, generator=g) * 40
    wh = torch.rand(5, 2, generator=g) * 30 + 4
    gts = torch.cat([xy, xy + wh], dim=1)
    labels = torch.randint(1, 3, (5,), generator=g)
    res = FCOSAssigner(STRIDES, RANGES, radius)([points_as_boxes(p) for p in points], gts, labels)
    ref_labels, ref_inds, ref_q = _reference(points, gts, labels, radius)
    assert res.labels.tolist() == ref_labels
    assert res.gt_inds.tolist() == ref_inds
    torch.testing.assert_close(res.quality, torch.tensor(ref_q), atol=1e-5, rtol=0)
    assert res.num_pos > 0


def test_hand_values_and_smallest_area():
    # one level, stride 8, points at 4, 12, 20, 28 (x and y)
    points = PointGenerator((8,)).grid_points([(4, 4)])
    big = [0.0, 0.0, 32.0, 32.0]
    small = [8.0, 8.0, 16.0, 16.0]  # contains only the point (12, 12)
    res = FCOSAssigner((8,), ((-1.0, math.inf),))([points_as_boxes(points[0])],
                                                  torch.tensor([big, small]), torch.tensor([1, 2]))
    grid = res.labels.view(4, 4)
    assert grid[1, 1] == 2 and res.gt_inds.view(4, 4)[1, 1] == 1  # smallest GT wins
    assert (res.labels > 0).sum() == 16                              # all points inside "big"
    assert res.quality.view(4, 4)[1, 1] == pytest.approx(1.0)       # centre of "small"
    assert res.quality.view(4, 4)[0, 0] == pytest.approx(math.sqrt(4 / 28 * 4 / 28))
    # a scale range that excludes the GT's regression distances
    res = FCOSAssigner((8,), ((-1.0, 10.0),))([points_as_boxes(points[0])],
                                              torch.tensor([big]), torch.tensor([1]))
    assert res.num_pos == 0


def test_empty_gt_and_helpers():
    points = PointGenerator(STRIDES).grid_points([(2, 2), (1, 1)])
    res = FCOSAssigner(STRIDES, RANGES)([points_as_boxes(p) for p in points], torch.zeros(0, 4),
                                        torch.zeros(0, dtype=torch.int64))
    assert res.labels.tolist() == [0] * 5
    assert scale_ranges_from_sizes([64, 128]) == ((-1.0, 64.0), (64.0, 128.0), (128.0, math.inf))
    assert fcos_centerness(torch.tensor([[0.0, 1.0, 1.0, 1.0]])).item() == 0.0
