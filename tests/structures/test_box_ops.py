"""box_ops against hand-computed values (the overlaps are tested in tests/layers/test_box_iou.py)."""
import math

import pytest
import torch

from maskrcnn_benchmark.structures import box_ops


def test_box_area_and_centers():
    b = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [-1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(box_ops.box_area(b), torch.tensor([6.0, 0.0, 8.0]))
    torch.testing.assert_close(box_ops.box_centers(b),
                               torch.tensor([[1.0, 1.5], [1.0, 3.0], [1.0, 3.0]]))
    assert box_ops.box_area(torch.zeros(0, 4)).shape == (0,)
    assert box_ops.box_centers(torch.zeros(0, 4)).shape == (0, 2)


def test_point_box_distances_broadcast_and_centerness():
    pts = torch.tensor([[4.0, 4.0], [10.0, 1.0]])
    boxes = torch.tensor([[2.0, 0.0, 10.0, 12.0], [0.0, 0.0, 4.0, 4.0]])
    d = box_ops.point_box_distances(pts[:, None, :], boxes[None])                  # [2, 2, 4]
    assert d.shape == (2, 2, 4)
    assert d[0, 0].tolist() == [2, 4, 6, 8] and d[1, 1].tolist() == [10, 1, -6, 3]
    # centerness: sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)); 0 on / outside a side
    c = box_ops.centerness(d)
    assert c[0, 0].item() == pytest.approx(math.sqrt(2 / 6 * 4 / 8))
    assert c[1, 1].item() == 0.0 and c[1, 0].item() == 0.0  # (10, 1) is on the right side of box 0
    assert not torch.isnan(box_ops.centerness(torch.zeros(3, 4))).any()


def test_release_plus_one_helpers_hand_values():
    """MODEL.LEGACY_PLUS_ONE: the releases' distances (from the centre value, continuous - 0.5, to the
    inclusive sides x2 - 1), inclusive boxes, and their clip_to_image + remove_small_boxes(0)."""
    pts = torch.tensor([[4.0, 5.0]])
    box = torch.tensor([[2.0, 0.0, 10.0, 12.0]])
    assert box_ops.point_box_distances(pts, box).tolist() == [[2.0, 5.0, 6.0, 7.0]]
    assert box_ops.point_box_distances(pts, box, plus_one=True).tolist() == [[1.5, 4.5, 5.5, 6.5]]
    assert box_ops.inclusive_boxes(box).tolist() == [[2.0, 0.0, 9.0, 11.0]]
    boxes = torch.tensor([[-3.0, 2.0, 50.0, 45.0],     # overhangs left and right
                          [41.0, 10.0, 44.0, 12.0],    # entirely right of a 40 px wide image
                          [5.0, 5.0, 5.2, 9.0]])       # 0.2 px wide, inside
    clipped, keep = box_ops.clip_boxes(boxes, (40, 30))
    assert clipped.tolist() == [[0.0, 2.0, 40.0, 30.0], [40.0, 10.0, 40.0, 12.0], [5.0, 5.0, 5.199999809265137, 9.0]]
    assert keep.tolist() == [True, False, True]
    # release: inclusive x1, x2 - 1 clamped to [0, w - 1] -> x1 in [0, 39], x2 in [1, 40]; keep x2 >= x1
    clipped, keep = box_ops.clip_boxes(boxes, (40, 30), plus_one=True)
    assert clipped.tolist() == [[0.0, 2.0, 40.0, 30.0], [39.0, 10.0, 40.0, 12.0], [5.0, 5.0, 5.199999809265137, 9.0]]
    assert keep.tolist() == [True, True, True]  # the release keeps the 1 px sliver at the border


def test_structures_import_nothing_else_of_the_package():
    """structures/ is a ground floor: it does not import layers/ (the overlaps live there) or anything else."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import sys, maskrcnn_benchmark.structures, maskrcnn_benchmark.structures.box_ops; "
            "print(sorted(m for m in sys.modules if m.startswith('maskrcnn_benchmark.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert all(m.startswith("maskrcnn_benchmark.structures") for m in eval(out)), out
