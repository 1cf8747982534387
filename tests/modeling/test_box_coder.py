import math

import pytest
import torch

from maskrcnn_benchmark.modeling.box_coder import BoxCoder, PointCoder, build_box_coder


def _random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 150 + 1
    return torch.cat([xy, xy + wh], dim=1).double()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_round_trip(seed):
    coder = BoxCoder()
    gt, anchors = _random_boxes(50, seed), _random_boxes(50, seed + 10)
    deltas = coder.encode(gt, anchors)
    # keep inside the clamp so the round trip is exact
    assert deltas[:, 2:].div(5).max() < coder.bbox_xform_clip
    torch.testing.assert_close(coder.decode(deltas, anchors), gt)


def test_box_hand_values():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), w 10, h 20
    gt = torch.tensor([[2.0, 4.0, 22.0, 24.0]])      # centre (12, 14), w 20, h 20
    expected = torch.tensor([[10 * 7 / 10, 10 * 4 / 20, 5 * math.log(2.0), 5 * math.log(1.0)]])
    torch.testing.assert_close(coder.encode(gt, anchor), expected)
    torch.testing.assert_close(coder.decode(expected, anchor), gt)


def test_box_decode_clamps_size():
    coder = BoxCoder()
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = coder.decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), anchor)
    assert torch.isfinite(out).all()
    w = out[0, 2] - out[0, 0]
    torch.testing.assert_close(w, torch.tensor(1000.0))  # exp(log(1000/16)) * 16


def test_box_decode_broadcasts_over_batch():
    coder = BoxCoder()
    anchors = _random_boxes(7, 3).float()
    deltas = torch.randn(2, 7, 4)
    out = coder.decode(deltas, anchors[None])
    assert out.shape == (2, 7, 4)
    torch.testing.assert_close(out[1], coder.decode(deltas[1], anchors))


def test_point_coder_hand_values_and_round_trip():
    coder = PointCoder(scale=8.0)
    anchor = torch.tensor([[-28.0, -28.0, 36.0, 36.0]])  # centre (4, 4), size 64 -> unit 8 px
    gt = torch.tensor([[0.0, -4.0, 20.0, 12.0]])
    expected = torch.tensor([[4 / 8, 8 / 8, 16 / 8, 8 / 8]])
    torch.testing.assert_close(coder.encode(gt, anchor), expected)
    torch.testing.assert_close(coder.decode(expected, anchor), gt)
    gt2, anchors2 = _random_boxes(20, 5), _random_boxes(20, 6)
    torch.testing.assert_close(coder.decode(coder.encode(gt2, anchors2), anchors2), gt2)


def test_build_box_coder():
    assert isinstance(build_box_coder("BOX"), BoxCoder)
    assert isinstance(build_box_coder("POINT"), PointCoder)
    with pytest.raises(ValueError, match="REGRESSION_TYPE"):
        build_box_coder("CORNER")
