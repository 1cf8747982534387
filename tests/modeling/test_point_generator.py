import torch

from maskrcnn_benchmark.modeling.dense_heads.base import permute_and_flatten
from maskrcnn_benchmark.modeling.point_generator import (PointGenerator, boxes_to_distances,
                                                         distances_to_boxes, points_as_boxes)


def test_points_positions_and_order():
    gen = PointGenerator((8, 16), offset=0.5)
    pts = gen.grid_points([(2, 3), (1, 2)])
    assert pts[0].tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert pts[1].tolist() == [[8, 8], [24, 8]]
    corner = PointGenerator((8,), offset=0.0).grid_points([(1, 2)])[0]
    assert corner.tolist() == [[0, 0], [8, 0]]
    # order matches the flattening of head outputs: channel map x(y, x) = 10 * y + x
    fmap = (10 * torch.arange(2.0)[:, None] + torch.arange(3.0)[None]).view(1, 1, 2, 3)
    flat = permute_and_flatten(fmap, 1, 1)[0, :, 0]
    assert flat.tolist() == [10 * (y // 8) + x // 8 for x, y in pts[0].tolist()]


def test_forward_and_roundtrip():
    gen = PointGenerator((8, 16))
    feats = [torch.zeros(2, 4, 4, 5), torch.zeros(2, 4, 2, 3)]
    out = gen(feats)
    assert [p.shape for p in out] == [(20, 2), (6, 2)]
    assert torch.equal(gen.as_boxes(out[1]), torch.cat([out[1], out[1]], dim=1))
    p = torch.tensor([[10.0, 20.0], [5.0, 5.0]])
    d = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    boxes = distances_to_boxes(d, p)
    assert boxes.tolist() == [[9, 18, 13, 24], [5, 5, 6, 6]]
    torch.testing.assert_close(boxes_to_distances(boxes, points_as_boxes(p)), d)
    torch.testing.assert_close(distances_to_boxes(d, points_as_boxes(p)), boxes)
