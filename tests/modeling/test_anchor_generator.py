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


# ---- the original releases' "+1" frame (MODEL.LEGACY_PLUS_ONE), re-derived by hand -----------------
def test_legacy_cell_anchors_hand_values():
    """generate_anchors of both releases: window [1, 1, s, s] - 0.5 (width s, centre value s / 2); per
    ratio r: ws = round(sqrt(s^2 / r)), hs = round(ws r) (half to even); per size S: W = ws S / s."""
    from maskrcnn_benchmark.modeling.anchor_generator import legacy_cell_anchors

    # s = 8, S = 64, r = 1: W = 64, centre 4: [4 - 31.5, 4 + 31.5]
    assert legacy_cell_anchors(8, (64,), (1.0,)).tolist() == [[-27.5, -27.5, 35.5, 35.5]]
    # s = 128, S = 1024: [64 - 511.5, 64 + 511.5]
    assert legacy_cell_anchors(128, (1024,), (1.0,)).tolist() == [[-447.5, -447.5, 575.5, 575.5]]
    # s = 8, S = 32, r = 0.5: ws = round(sqrt(128)) = 11, hs = round(5.5) = 6 (to even); W = 44, H = 24
    # r = 2: ws = round(sqrt(32)) = 6, hs = 12; W = 24, H = 48
    got = legacy_cell_anchors(8, (32,), (0.5, 2.0)).tolist()
    assert got == [[4 - 21.5, 4 - 11.5, 4 + 21.5, 4 + 11.5], [4 - 11.5, 4 - 23.5, 4 + 11.5, 4 + 23.5]]


def _checkpoint_cell_anchors():
    """What a release checkpoint holds in rpn.anchor_generator.cell_anchors.<l> for the ATSS configs
    (strides 8..128, sizes 8 x stride, one square anchor), computed by hand: [s/2 - (S-1)/2, s/2 + (S-1)/2]."""
    return {f"rpn.anchor_generator.cell_anchors.{i}":
            torch.tensor([[s / 2 - (8 * s - 1) / 2] * 2 + [s / 2 + (8 * s - 1) / 2] * 2])
            for i, s in enumerate((8, 16, 32, 64, 128))}


def test_legacy_generator_holds_the_checkpoint_buffers_and_returns_continuous_anchors():
    gen = AnchorGenerator(legacy_plus_one=True, offset=0.25)  # offset unused in the release geometry
    ckpt = _checkpoint_cell_anchors()
    assert list(gen.state_dict()) == [f"cell_anchors.{i}" for i in range(5)]
    for i in range(5):
        assert torch.equal(gen.state_dict()[f"cell_anchors.{i}"], ckpt[f"rpn.anchor_generator.cell_anchors.{i}"])
    level0 = gen.grid_anchors([(2, 3)] * 5)[0]
    # cell (y, x): inclusive [-27.5 + 8x, -27.5 + 8y, 35.5 + 8x, 35.5 + 8y] -> continuous x2, y2 + 1:
    # centre (8x + 4.5, 8y + 4.5), 0.5 px right of / below the project's (8x + 4, 8y + 4)
    expected = torch.tensor([[-27.5 + 8 * x, -27.5 + 8 * y, 36.5 + 8 * x, 36.5 + 8 * y]
                             for y in range(2) for x in range(3)])
    assert torch.equal(level0, expected)
    plain = AnchorGenerator().grid_anchors([(2, 3)] * 5)[0]
    torch.testing.assert_close(level0 - plain, torch.full_like(plain, 0.5))
    assert AnchorGenerator().state_dict() == {}  # the continuous generator has no state


def test_checkpoint_supplies_the_anchors_and_invalidates_the_cache():
    from maskrcnn_benchmark.utils.legacy_plus_one import rename_release_anchor_keys

    gen = AnchorGenerator(sizes=(64,), strides=(8,), legacy_plus_one=True)
    before = gen.grid_anchors([(1, 1)])[0].clone()
    other = {"rpn.anchor_generator.cell_anchors.0": torch.tensor([[-28.0, -28.0, 35.0, 35.0]])}
    renamed = rename_release_anchor_keys(other)
    assert list(renamed) == ["rpn.prior_generator.cell_anchors.0"]
    gen.load_state_dict({"cell_anchors.0": renamed["rpn.prior_generator.cell_anchors.0"]})
    after = gen.grid_anchors([(1, 1)])[0]
    assert before.tolist() == [[-27.5, -27.5, 36.5, 36.5]]
    assert after.tolist() == [[-28.0, -28.0, 36.0, 36.0]]


def _original_decode(delta, anchor):
    """The releases' BoxCoder.decode (BOX, weights 10, 10, 5, 5, TO_REMOVE = 1)."""
    widths, heights = anchor[2] - anchor[0] + 1, anchor[3] - anchor[1] + 1
    ctr_x, ctr_y = anchor[0] + 0.5 * widths, anchor[1] + 0.5 * heights
    dx, dy, dw, dh = delta[0] / 10, delta[1] / 10, delta[2] / 5, delta[3] / 5
    pcx, pcy = dx * widths + ctr_x, dy * heights + ctr_y
    pw, ph = math.exp(dw) * widths, math.exp(dh) * heights
    return [pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw - 1, pcy + 0.5 * ph - 1]


def _original_json(box, ratio_w, ratio_h):
    """BoxList.resize (every coordinate times the ratio) then convert("xywh") with w = x2 - x1 + 1."""
    x1, y1, x2, y2 = box[0] * ratio_w, box[1] * ratio_h, box[2] * ratio_w, box[3] * ratio_h
    return [x1, y1, x2 - x1 + 1, y2 - y1 + 1]


@pytest.mark.parametrize("orig_size", [(480, 400), (1000, 900)])
def test_original_release_boxes_reproduced_exactly(orig_size):
    """Release anchors + release decode + release rescale and json == ours with legacy_plus_one; the
    continuous convention is 0.5 px off on every coordinate (issue 26)."""
    from maskrcnn_benchmark.modeling.box_coder import BoxCoder
    from maskrcnn_benchmark.structures.bounding_box import BoxList

    stride, size, gw, gh = 8, 64, 5, 4
    net_size = (gw * stride, gh * stride)  # (w, h) of the network input
    g = torch.Generator().manual_seed(0)
    deltas = (torch.rand(gw * gh, 4, generator=g, dtype=torch.float64) - 0.5) * 2
    cell = [stride / 2 - (size - 1) / 2] * 2 + [stride / 2 + (size - 1) / 2] * 2
    release_anchors = [[cell[0] + x * stride, cell[1] + y * stride, cell[2] + x * stride, cell[3] + y * stride]
                       for y in range(gh) for x in range(gw)]
    original = torch.tensor([_original_decode(d.tolist(), a) for d, a in zip(deltas, release_anchors)],
                            dtype=torch.float64)

    (anchors,) = AnchorGenerator(sizes=(size,), strides=(stride,), legacy_plus_one=True).grid_anchors(
        [(gh, gw)], dtype=torch.float64)
    ours = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(deltas, anchors)
    plus_one = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(ours, original + plus_one)  # same pixels: inclusive [x1, x2] = [x1, x2 + 1)
    (plain,) = AnchorGenerator(sizes=(size,), strides=(stride,)).grid_anchors([(gh, gw)], dtype=torch.float64)
    torch.testing.assert_close(BoxCoder().decode(deltas, plain), original + plus_one - 0.5)

    rw, rh = orig_size[0] / net_size[0], orig_size[1] / net_size[1]
    expected = torch.tensor([_original_json(b, rw, rh) for b in original.tolist()], dtype=torch.float64)
    legacy = BoxList(ours, net_size).resize(orig_size, legacy_plus_one=True).xywh()
    torch.testing.assert_close(legacy, expected)
