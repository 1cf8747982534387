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


def test_octave_and_offset():
    """Scale k of n has size S * octave^(k / n); cell (y, x) is centred at ((x + offset) * s, ...)."""
    a = cell_anchors(32, (1.0,), 3, octave=4.0).double()
    torch.testing.assert_close(a[:, 2] - a[:, 0], torch.tensor([32.0, 32 * 4 ** (1 / 3), 32 * 4 ** (2 / 3)],
                                                              dtype=torch.float64))
    (level,) = AnchorGenerator(sizes=(16,), strides=(8,), offset=0.0).grid_anchors([(1, 3)])
    torch.testing.assert_close((level[:, 0] + level[:, 2]) / 2, torch.tensor([0.0, 8.0, 16.0]))
    (level,) = AnchorGenerator(sizes=(16,), strides=(8,), offset=0.25).grid_anchors([(2, 1)])
    torch.testing.assert_close((level[:, 1] + level[:, 3]) / 2, torch.tensor([2.0, 10.0]))
    with pytest.raises(ValueError, match="octave"):
        AnchorGenerator(octave=0.0)


def test_octave_and_offset_come_from_the_config():
    from maskrcnn_benchmark.config import cfg as default_cfg
    from maskrcnn_benchmark.modeling.dense_heads import build_dense_head

    for head, node in (("ATSS", "ATSS"), ("RETINANET", "RETINANET")):
        cfg = default_cfg.clone()
        cfg.MODEL.HEAD = head
        cfg.MODEL[node].OCTAVE = 3.0
        cfg.MODEL[node].SCALES_PER_OCTAVE = 2
        cfg.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0
        cfg.MODEL.GROUP_NORM.NUM_GROUPS = 4
        gen = build_dense_head(cfg, 8).prior_generator
        assert gen.octave == 3.0 and gen.offset == 0.0
        w = gen.cell_anchors[0][:, 2] - gen.cell_anchors[0][:, 0]
        size = cfg.MODEL[node].ANCHOR_SIZES[0]
        r = cfg.MODEL[node].ASPECT_RATIOS[0]
        torch.testing.assert_close(w[:2].double(), torch.tensor([size, size * 3 ** 0.5], dtype=torch.float64)
                                   / math.sqrt(r))


# ---- the original release's "+1" frame, re-derived by hand ---------------------------------------
def _original_anchors(stride, size, grid_w, grid_h):
    """maskrcnn-benchmark generate_anchors (one square anchor) + grid shifts, "+1" frame, float64."""
    base = [0.0, 0.0, stride - 1.0, stride - 1.0]          # np.array([1, 1, s, s]) - 1
    w = base[2] - base[0] + 1                               # _whctrs
    x_ctr = base[0] + 0.5 * (w - 1)
    ws = w * (size / stride)                                # _scale_enum (ratio 1 keeps the base)
    cell = [x_ctr - 0.5 * (ws - 1), x_ctr - 0.5 * (ws - 1), x_ctr + 0.5 * (ws - 1), x_ctr + 0.5 * (ws - 1)]
    rows = []
    for y in range(grid_h):
        for x in range(grid_w):
            rows.append([cell[0] + x * stride, cell[1] + y * stride, cell[2] + x * stride, cell[3] + y * stride])
    return rows


def _original_decode(delta, anchor):
    """The ATSS release's BoxCoder.decode (BOX, weights 10, 10, 5, 5, TO_REMOVE = 1)."""
    widths, heights = anchor[2] - anchor[0] + 1, anchor[3] - anchor[1] + 1
    ctr_x, ctr_y = (anchor[2] + anchor[0]) / 2, (anchor[3] + anchor[1]) / 2
    dx, dy, dw, dh = delta[0] / 10, delta[1] / 10, delta[2] / 5, delta[3] / 5
    pcx, pcy = dx * widths + ctr_x, dy * heights + ctr_y
    pw, ph = math.exp(dw) * widths, math.exp(dh) * heights
    return [pcx - 0.5 * (pw - 1), pcy - 0.5 * (ph - 1), pcx + 0.5 * (pw - 1), pcy + 0.5 * (ph - 1)]


def _original_json(box, ratio_w, ratio_h):
    """BoxList.resize (every coordinate times the ratio) then convert("xywh") with w = x2 - x1 + 1."""
    x1, y1, x2, y2 = box[0] * ratio_w, box[1] * ratio_h, box[2] * ratio_w, box[3] * ratio_h
    return [x1, y1, x2 - x1 + 1, y2 - y1 + 1]


@pytest.mark.parametrize("orig_size", [(480, 400), (1000, 900)])
def test_original_release_boxes_reproduced_exactly(orig_size):
    from maskrcnn_benchmark.modeling.box_coder import BoxCoder
    from maskrcnn_benchmark.structures.bounding_box import BoxList

    stride, size, gw, gh = 8, 64, 5, 4
    net_size = (gw * stride, gh * stride)  # (w, h) of the network input
    g = torch.Generator().manual_seed(0)
    deltas = (torch.rand(gw * gh, 4, generator=g, dtype=torch.float64) - 0.5) * 2
    original = [_original_decode(d.tolist(), a) for d, a in zip(deltas, _original_anchors(stride, size, gw, gh))]

    (anchors,) = AnchorGenerator(sizes=(size,), strides=(stride,)).grid_anchors([(gh, gw)], dtype=torch.float64)
    ours = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(deltas, anchors)
    # network frame: the original's "+1" box [x1, x2] covers [x1, x2 + 1): the same continuous box
    orig_t = torch.tensor(original, dtype=torch.float64)
    torch.testing.assert_close(ours, orig_t + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64))

    # the original image: json of the original == ours with TEST.LEGACY_PLUS_ONE_RESIZE
    rw, rh = orig_size[0] / net_size[0], orig_size[1] / net_size[1]
    expected = torch.tensor([_original_json(b, rw, rh) for b in original], dtype=torch.float64)
    legacy = BoxList(ours, net_size).resize(orig_size, legacy_plus_one=True).xywh()
    torch.testing.assert_close(legacy, expected)
    exact = BoxList(ours, net_size).resize(orig_size).xywh()
    torch.testing.assert_close(exact[:, :2], expected[:, :2])  # left / top edges agree either way
    torch.testing.assert_close(exact[:, 2:] - expected[:, 2:],  # far edges: r - 1 px
                               torch.tensor([rw - 1, rh - 1], dtype=torch.float64).expand(len(exact), 2))
