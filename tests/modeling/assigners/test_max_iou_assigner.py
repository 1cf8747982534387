import pytest
import torch

from maskrcnn_benchmark.modeling.assigners import MaxIoUAssigner


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference(anchors, gts, labels, fg, bg, low_quality):
    """The maskrcnn-benchmark Matcher, loop form (with the > 0 guard of the low-quality step)."""
    anchors, gts = anchors.tolist(), gts.tolist()
    n, g = len(anchors), len(gts)
    ious = [[_iou(gts[j], anchors[i]) for i in range(n)] for j in range(g)]
    out_labels, out_inds, out_q = [], [], []
    for i in range(n):
        col = [ious[j][i] for j in range(g)]
        best = max(col)
        j_best = col.index(best)
        if best >= fg:
            state = "pos"
        elif best >= bg:
            state = "ignore"
        else:
            state = "bg"
        if low_quality:
            for j in range(g):
                gt_best = max(ious[j])
                if gt_best > 0 and ious[j][i] == gt_best:
                    state = "pos"
        if state == "pos":
            out_labels.append(int(labels[j_best]))
            out_inds.append(j_best)
            out_q.append(best)
        else:
            out_labels.append(-1 if state == "ignore" else 0)
            out_inds.append(-1)
            out_q.append(0.0)
    return out_labels, out_inds, out_q


def _random_boxes(n, size, generator):
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 2 + 2
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("low_quality", [True, False])
def test_matches_loop_reference(seed, low_quality):
    g = torch.Generator().manual_seed(seed)
    anchors = _random_boxes(40, 64, g)
    gts = _random_boxes(4, 64, g)
    labels = torch.randint(1, 4, (4,), generator=g)
    assigner = MaxIoUAssigner(0.5, 0.4, allow_low_quality_matches=low_quality)
    res = assigner([anchors[:30], anchors[30:]], gts, labels)
    ref_labels, ref_inds, ref_q = _reference(anchors, gts, labels, 0.5, 0.4, low_quality)
    assert res.labels.tolist() == ref_labels
    assert res.gt_inds.tolist() == ref_inds
    torch.testing.assert_close(res.quality, torch.tensor(ref_q), atol=1e-5, rtol=0)


def test_hand_values_thresholds_and_low_quality():
    anchors = torch.tensor([[0., 0., 10., 10.],    # IoU 1 with GT 0: positive
                            [0., 0., 10., 9.],     # IoU 0.9: positive
                            [0., 0., 10., 4.5],    # IoU 0.45: ignored
                            [0., 0., 10., 2.],     # IoU 0.2: background
                            [40., 40., 50., 46.]])  # best anchor of GT 1 (IoU 0.3): low quality
    gts = torch.tensor([[0., 0., 10., 10.], [40., 40., 60., 50.]])
    res = MaxIoUAssigner(0.5, 0.4)([anchors], gts, torch.tensor([2, 1]))
    assert res.labels.tolist() == [2, 2, -1, 0, 1]
    assert res.gt_inds.tolist() == [0, 0, -1, -1, 1]
    torch.testing.assert_close(res.quality, torch.tensor([1.0, 0.9, 0.0, 0.0, 0.3]))
    res = MaxIoUAssigner(0.5, 0.4, allow_low_quality_matches=False)([anchors], gts, torch.tensor([2, 1]))
    assert res.labels.tolist() == [2, 2, -1, 0, 0]


def test_empty_gt_and_gt_without_overlap():
    anchors = torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.]])
    res = MaxIoUAssigner()([anchors], torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert res.labels.tolist() == [0, 0] and res.gt_inds.tolist() == [-1, -1]
    # a GT overlapping no anchor must not turn every anchor positive
    res = MaxIoUAssigner()([anchors], torch.tensor([[100., 100., 110., 110.]]), torch.tensor([1]))
    assert res.labels.tolist() == [0, 0]


def test_invalid_thresholds():
    with pytest.raises(ValueError):
        MaxIoUAssigner(0.4, 0.5)
