import math

import pytest
import torch

from maskrcnn_benchmark.modeling.anchor_generator import AnchorGenerator, cell_anchors


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


def test_forward_per_level_and_cache():
    gen = AnchorGenerator()
    feats = [torch.zeros(2, 4, 96 // s, 128 // s) for s in (8, 16, 32, 64, 128)]
    feats[-1] = torch.zeros(2, 4, 1, 1)
    feats[-2] = torch.zeros(2, 4, 2, 2)
    out = gen(feats)  # one set per level, shared by the images (not one list per image)
    assert len(out) == 5
    assert [x.shape[0] for x in out] == [f.shape[2] * f.shape[3] for f in feats]
    assert gen(feats)[0] is out[0]  # cached
    assert gen.as_boxes(out[0]) is out[0]


def test_straddle_thresh_config_is_accepted_and_ignored():
    """The original yaml files set MODEL.*.STRADDLE_THRESH; they still merge, and the anchors do
    not depend on it (the dense heads never dropped border anchors)."""
    from maskrcnn_benchmark.config import cfg as default_cfg
    from maskrcnn_benchmark.modeling.dense_heads.atss import build_atss_parts

    cfg = default_cfg.clone()
    cfg.merge_from_list(["MODEL.ATSS.STRADDLE_THRESH", 0, "MODEL.RETINANET.STRADDLE_THRESH", 0,
                         "MODEL.ATSS.NUM_CLASSES", 3])
    a = build_atss_parts(cfg, 32)[1].grid_anchors([(2, 2)] * 5)
    cfg.MODEL.ATSS.STRADDLE_THRESH = -1
    b = build_atss_parts(cfg, 32)[1].grid_anchors([(2, 2)] * 5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="strides"):
        AnchorGenerator(sizes=(32, 64), strides=(8,))
