import math

import pytest
import torch

from maskrcnn_benchmark.modeling.anchor_generator import AnchorGenerator, cell_anchors
from maskrcnn_benchmark.structures.image_list import ImageList


def test_two_by_two_square_anchors_by_hand():
    gen = AnchorGenerator(sizes=(64,), aspect_ratios=(1.0,), strides=(8,), scales_per_octave=1)
    (level,) = gen.grid_anchors([(2, 2)])
    # centres at (x*8 + 4, y*8 + 4), row-major over (y, x); half size 32
    expected = torch.tensor([
        [4 - 32, 4 - 32, 4 + 32, 4 + 32],
        [12 - 32, 4 - 32, 12 + 32, 4 + 32],
        [4 - 32, 12 - 32, 4 + 32, 12 + 32],
        [12 - 32, 12 - 32, 12 + 32, 12 + 32],
    ], dtype=torch.float32)
    torch.testing.assert_close(level, expected)


def test_location_major_anchor_minor_with_ratios_and_scales():
    ratios, spo, size, stride = (0.5, 1.0, 2.0), 3, 32, 8
    gen = AnchorGenerator(sizes=(size,), aspect_ratios=ratios, strides=(stride,), scales_per_octave=spo)
    (level,) = gen.grid_anchors([(2, 3)])
    assert level.shape == (2 * 3 * 9, 4)
    for loc in range(6):
        y, x = divmod(loc, 3)
        cx, cy = x * stride + stride / 2, y * stride + stride / 2
        for a in range(9):
            r, k = ratios[a // spo], a % spo
            s = size * 2 ** (k / spo)
            w, h = s / math.sqrt(r), s * math.sqrt(r)
            row = level[loc * 9 + a]
            torch.testing.assert_close(row, torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))


def test_cell_anchor_area_and_ratio():
    a = cell_anchors(64, (0.5, 2.0), 1).double()
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    torch.testing.assert_close(w * h, torch.full((2,), 64.0 ** 2, dtype=torch.float64))
    torch.testing.assert_close(h / w, torch.tensor([0.5, 2.0], dtype=torch.float64))


def test_forward_per_image_per_level_and_cache():
    gen = AnchorGenerator()
    feats = [torch.zeros(2, 4, 96 // s, 128 // s) for s in (8, 16, 32, 64, 128)]
    feats[-1] = torch.zeros(2, 4, 1, 1)
    feats[-2] = torch.zeros(2, 4, 2, 2)
    images = ImageList(torch.zeros(2, 3, 96, 128), [(96, 128), (90, 100)])
    out = gen(images, feats)
    assert len(out) == 2 and len(out[0]) == 5
    assert [x.shape[0] for x in out[0]] == [f.shape[2] * f.shape[3] for f in feats]
    assert gen(images, feats)[0][0] is out[0][0]  # cached


def test_visibility():
    gen = AnchorGenerator(sizes=(16,), strides=(8,), straddle_thresh=0)
    (level,) = gen.grid_anchors([(2, 2)])
    vis = gen.visibility(level, (16, 16))
    # anchors of size 16 centred at 4 / 12 stick out of a 16x16 image
    assert not vis.any()
    gen_off = AnchorGenerator(sizes=(16,), strides=(8,), straddle_thresh=-1)
    assert gen_off.visibility(level, (16, 16)).all()


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="strides"):
        AnchorGenerator(sizes=(32, 64), strides=(8,))
