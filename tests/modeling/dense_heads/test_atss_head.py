import math

import pytest
import torch

from maskrcnn_benchmark.layers import nms
from maskrcnn_benchmark.modeling.anchor_generator import AnchorGenerator
from maskrcnn_benchmark.modeling.assigners import ATSSAssigner
from maskrcnn_benchmark.modeling.box_coder import BoxCoder, PointCoder
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS
from maskrcnn_benchmark.modeling.dense_heads.atss import ATSSHead, ATSSLoss, centerness_targets
from maskrcnn_benchmark.modeling.dense_heads.base import (DenseHead, DensePostProcessor, DensePrediction,
                                                          ScoreRule, permute_and_flatten)
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList

NUM_CLASSES = 3
STRIDES = (8, 16)
IMAGE = (64, 64)  # (h, w)


def _module(regression_type="BOX", topk=3, num_classes=NUM_CLASSES):
    torch.manual_seed(0)
    head = ATSSHead(16, num_classes, num_anchors=1, num_convs=1, num_levels=2,
                    regression_type=regression_type, num_groups=4)
    gen = AnchorGenerator(sizes=(32, 64), strides=STRIDES)
    coder = BoxCoder() if regression_type == "BOX" else PointCoder(4.0)
    loss = ATSSLoss(coder, gamma=2.0, alpha=0.25, reg_loss_weight=2.0)
    post = DensePostProcessor(1000, 0.6, 100)
    return DenseHead(head, gen, ATSSAssigner(topk=topk), loss, post, coder.decode,
                     ScoreRule(0.05, use_quality=True, transform=torch.sqrt))


def _inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, 16, IMAGE[0] // s, IMAGE[1] // s, generator=g) for s in STRIDES]
    images = ImageList(torch.zeros(batch, 3, *IMAGE), [IMAGE] * batch)
    return images, feats


def _target(boxes, labels):
    t = BoxList(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), (IMAGE[1], IMAGE[0]))
    t.add_field("labels", torch.tensor(labels, dtype=torch.int64))
    return t


def _giou_py(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enc = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (enc - union) / enc


def test_head_shapes_names_and_init():
    head = ATSSHead(32, 5, num_anchors=2, num_convs=2, num_levels=3, num_groups=8)
    names = set(dict(head.named_parameters()))
    for n in ["cls_tower.0.weight", "cls_tower.1.weight", "cls_tower.3.bias", "bbox_tower.3.weight",
              "cls_logits.weight", "bbox_pred.bias", "centerness.weight", "scales.2.scale"]:
        assert n in names
    torch.testing.assert_close(head.cls_logits.bias, torch.full((10,), -math.log(99.0)))
    assert head.bbox_pred.bias.abs().max() == 0
    feats = [torch.randn(2, 32, s, s) for s in (8, 4, 2)]
    logits, reg, ctr = head(feats)
    assert [t.shape for t in logits] == [(2, 10, s, s) for s in (8, 4, 2)]
    assert [t.shape for t in reg] == [(2, 8, s, s) for s in (8, 4, 2)]
    assert [t.shape for t in ctr] == [(2, 2, s, s) for s in (8, 4, 2)]


def test_dcn_tower_names_and_forward():
    head = ATSSHead(16, 2, num_convs=2, num_levels=1, use_dcn_in_tower=True, num_groups=4)
    names = set(dict(head.named_parameters()))
    for n in ["cls_tower.0.weight", "cls_tower.3.offset.weight", "cls_tower.3.conv.weight",
              "bbox_tower.3.conv.bias"]:
        assert n in names, n
    assert head.cls_tower[3].offset.weight.abs().max() == 0  # zero offsets at init
    logits, reg, ctr = head([torch.randn(1, 16, 5, 6)])
    assert logits[0].shape == (1, 2, 5, 6) and reg[0].shape == (1, 4, 5, 6)


def test_point_head_relu_and_bias():
    head = ATSSHead(16, 2, num_convs=1, num_levels=1, regression_type="POINT", num_groups=4)
    torch.testing.assert_close(head.bbox_pred.bias, torch.full((4,), 4.0))
    _, reg, _ = head([torch.randn(1, 16, 4, 4) * 100])
    assert (reg[0] >= 0).all()
    with pytest.raises(ValueError, match="POINT"):
        ATSSHead(16, 2, num_anchors=2, regression_type="POINT", num_groups=4)


def test_permute_and_flatten_order():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(1, 2 * 3, 2, 2)  # A=2, K=3
    out = permute_and_flatten(x, 2, 3)
    assert out.shape == (1, 8, 3)
    # row (y, x, a) holds channels a*3 .. a*3+2 at (y, x)
    for y in range(2):
        for xx in range(2):
            for a in range(2):
                torch.testing.assert_close(out[0, (y * 2 + xx) * 2 + a], x[0, a * 3:(a + 1) * 3, y, xx])


def test_centerness_targets_hand_values():
    anchors = torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 8.0, 8.0]])  # centres (4, 4), (8, 8)
    gt = torch.tensor([[2.0, 0.0, 10.0, 12.0], [8.0, 0.0, 20.0, 20.0]])
    # l=2, r=6, t=4, b=8 -> sqrt(2/6 * 4/8); second centre on the left side -> 0
    torch.testing.assert_close(centerness_targets(anchors, gt), torch.tensor([math.sqrt(1 / 6), 0.0]))


def test_loss_matches_plain_recomputation():
    module = _module()
    module.train()
    images, feats = _inputs()
    targets = [_target([[4, 6, 40, 44], [20, 18, 62, 60]], [1, 3]), _target([[10, 30, 34, 62]], [2])]
    losses = module(images, feats, targets)[1]

    logits, reg, ctr = module.head(feats)
    anchors_lvl = module.prior_generator(feats)
    anchors = torch.cat(anchors_lvl)
    coder, alpha, gamma = module.loss_evaluator.box_coder, 0.25, 2.0
    cls_sum = reg_sum = ctr_sum = w_sum = 0.0
    num_pos = 0
    for i, t in enumerate(targets):
        res = ATSSAssigner(topk=3)(anchors_lvl, t.bbox, t.get_field("labels"))
        lg = torch.cat([permute_and_flatten(x[i:i + 1], 1, NUM_CLASSES)[0] for x in logits]).double()
        rg = torch.cat([permute_and_flatten(x[i:i + 1], 1, 4)[0] for x in reg]).double()
        ct = torch.cat([permute_and_flatten(x[i:i + 1], 1, 1)[0] for x in ctr]).double()[:, 0]
        for n in range(anchors.shape[0]):
            for c in range(NUM_CLASSES):
                p = torch.sigmoid(lg[n, c]).item()
                if res.labels[n] == c + 1:
                    cls_sum += -alpha * (1 - p) ** gamma * math.log(p)
                else:
                    cls_sum += -(1 - alpha) * p ** gamma * math.log(1 - p)
            if res.gt_inds[n] < 0:
                continue
            num_pos += 1
            gt = t.bbox[res.gt_inds[n]].tolist()
            a = anchors[n].tolist()
            cx, cy = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
            l, r, tt, b = cx - gt[0], gt[2] - cx, cy - gt[1], gt[3] - cy
            w = math.sqrt(min(l, r) / max(l, r) * min(tt, b) / max(tt, b))
            box = coder.decode(rg[n:n + 1], anchors[n:n + 1].double())[0].tolist()
            reg_sum += w * (1 - _giou_py(box, gt))
            w_sum += w
            o = ct[n].item()
            ctr_sum += -(w * math.log(1 / (1 + math.exp(-o))) + (1 - w) * math.log(1 - 1 / (1 + math.exp(-o))))
    assert num_pos > 0
    assert losses["loss_cls"].item() == pytest.approx(cls_sum / num_pos, rel=1e-4)
    assert losses["loss_reg"].item() == pytest.approx(2.0 * reg_sum / w_sum, rel=1e-4)
    assert losses["loss_centerness"].item() == pytest.approx(ctr_sum / num_pos, rel=1e-4)


@pytest.mark.parametrize("regression_type", ["BOX", "POINT"])
def test_empty_gt_gives_finite_losses_and_backward(regression_type):
    module = _module(regression_type)
    module.train()
    images, feats = _inputs()
    empty = [_target([], []), _target([], [])]
    losses = module(images, feats, empty)[1]
    assert set(losses) == {"loss_cls", "loss_reg", "loss_centerness"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_reg"].item() == 0 and losses["loss_centerness"].item() == 0
    sum(losses.values()).backward()
    assert module.head.bbox_pred.weight.grad is not None  # graph stays alive
    assert torch.isfinite(module.head.cls_logits.weight.grad).all()


def test_one_pixel_gts_get_no_positive_and_are_counted():
    """Issue 28's silent case: 1 x 1 px GTs (no anchor centre inside) train no regression; the
    step's statistics say so (read by the hooks' UnmatchedGTWarning)."""
    module = _module()
    module.train()
    images, feats = _inputs()
    tiny = [_target([[10.0, 10.0, 11.0, 11.0], [30.0, 40.0, 31.0, 41.0]], [1, 2]),
            _target([[50.0, 2.0, 51.0, 3.0]], [3])]
    losses = module(images, feats, tiny)[1]
    assert losses["loss_reg"].item() == 0 and losses["loss_centerness"].item() == 0
    stats = {k: v.item() for k, v in module.step_metrics.items()}
    assert stats == {"num_gt": 3, "num_gt_unmatched": 3, "min_unmatched_size": 1.0}
    # a normal box next to them gets positives; only the tiny ones are counted
    mixed = [_target([[10.0, 10.0, 11.0, 11.0], [4.0, 4.0, 44.0, 36.0]], [1, 2]), _target([], [])]
    losses = module(images, feats, mixed)[1]
    assert losses["loss_reg"].item() > 0
    stats = {k: v.item() for k, v in module.step_metrics.items()}
    assert stats == {"num_gt": 2, "num_gt_unmatched": 1, "min_unmatched_size": 1.0}


def test_training_without_targets_raises():
    module = _module()
    module.train()
    with pytest.raises(ValueError, match="targets"):
        module(*_inputs())


def test_inference_sorted_bounded_inside_image():
    module = _module(num_classes=4)
    torch.nn.init.constant_(module.head.cls_logits.bias, 2.0)  # many candidates
    module.eval()
    images, feats = _inputs(batch=2, seed=3)
    images.image_sizes = [(64, 64), (50, 40)]
    dets, losses = module(images, feats)
    assert losses == {}
    assert len(dets) == 2
    for det, (h, w) in zip(dets, images.image_sizes):
        assert det.size == (w, h)
        s = det.get_field("scores")
        lab = det.get_field("labels")
        assert 0 < len(det) <= 100
        assert (s[:-1] >= s[1:]).all()
        assert lab.dtype == torch.int64 and lab.min() >= 1 and lab.max() <= 4
        b = det.bbox
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
        assert (s <= 1).all() and (s > 0).all()


def _post_reference(scores, deltas, anchors, mask, size, decode, top_n, nms_th, det_per_img):
    """Loop reference: per level threshold + top-k, decode, clip, per-class NMS, top-N."""
    boxes, sc, lab = [], [], []
    w, h = size
    for s, d, a, m in zip(scores, deltas, anchors, mask):
        cand = [(s[n, c].item(), n, c) for n in range(s.shape[0]) for c in range(s.shape[1]) if m[n, c]]
        cand.sort(key=lambda x: -x[0])
        for v, n, c in cand[:top_n]:
            bx = decode(d[n:n + 1], a[n:n + 1])[0]
            bx = torch.stack([bx[0].clamp(0, w), bx[1].clamp(0, h), bx[2].clamp(0, w), bx[3].clamp(0, h)])
            if bx[2] > bx[0] and bx[3] > bx[1]:
                boxes.append(bx); sc.append(math.sqrt(v)); lab.append(c + 1)
    boxes, sc, lab = torch.stack(boxes), torch.tensor(sc), torch.tensor(lab)
    keep = []
    for c in lab.unique():
        idx = (lab == c).nonzero()[:, 0]
        keep += idx[nms(boxes[idx], sc[idx], nms_th)].tolist()
    keep = sorted(keep, key=lambda k: -sc[k].item())[:det_per_img]
    return boxes[keep], sc[keep], lab[keep]


def test_post_processor_matches_loop_reference():
    g = torch.Generator().manual_seed(7)
    coder = BoxCoder()
    gen = AnchorGenerator(sizes=(16, 32), strides=STRIDES)
    anchors = gen.grid_anchors([(8, 8), (4, 4)])
    scores = [torch.rand(1, a.shape[0], 3, generator=g) for a in anchors]
    deltas = [torch.randn(1, a.shape[0], 4, generator=g) for a in anchors]
    mask = [s > 0.3 for s in scores]
    post = DensePostProcessor(20, 0.5, 15)
    boxes = coder.decode(torch.cat(deltas, dim=1), torch.cat(anchors)[None])
    pred = DensePrediction(torch.cat(scores, dim=1).sqrt(), boxes, torch.cat(mask, dim=1),
                           tuple(a.shape[0] for a in anchors))
    (det,) = post(pred, [(60, 62)])
    rb, rs, rl = _post_reference([s[0] for s in scores], [d[0] for d in deltas], anchors,
                                 [m[0] for m in mask], (62, 60), coder.decode, 20, 0.5, 15)
    assert len(det) == 15
    torch.testing.assert_close(det.get_field("scores"), rs)
    torch.testing.assert_close(det.bbox, rb)
    assert det.get_field("labels").tolist() == rl.tolist()


def test_registered():
    assert "ATSS" in DENSE_HEADS


# ---- MODEL.LEGACY_PLUS_ONE: the release's losses and detections, re-derived ------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_release_geometry_losses_match_release_formulas(seed):
    """ATSS with MODEL.LEGACY_PLUS_ONE True: every loss term within 1e-6 (relative) of the release's
    ATSSLossComputation re-derived in its "+1" frame (anchors, prepare_targets, centerness from
    l, t, r, b of the inclusive boxes, GIoU without "+1" areas)."""
    import release_reference as ref

    head = ref.build_release_head("ATSS", seed=seed)
    head.train()
    feats = ref.release_features(seed=seed + 10)
    gts, labels, targets = ref.release_batch(("random", "integer"), seed)
    h, w = ref.RELEASE_IMAGE_HW
    losses = head(ImageList(torch.zeros(2, 3, h, w), [(h, w)] * 2), feats, targets)[1]

    logits, reg, ctr = head.head(feats)
    theirs = ref.grid_anchors(ref.RELEASE_IMAGE_HW)
    cat = {"lab": [], "gt": [], "lg": [], "rg": [], "ct": [], "an": []}
    for i in range(2):
        lab, gt_idx, _ = ref.prepare_targets(theirs, gts[i], labels[i])
        cat["lab"].append(lab)
        cat["gt"].append(gts[i][gt_idx])
        cat["lg"].append(torch.cat(ref.flat_levels(logits, i)))
        cat["rg"].append(torch.cat(ref.flat_levels(reg, i)))
        cat["ct"].append(torch.cat(ref.flat_levels(ctr, i))[:, 0])
        cat["an"].append(torch.cat(theirs))
    c = {k: torch.cat(v) for k, v in cat.items()}
    expected = ref.atss_losses(c["lg"].detach().double(), c["rg"].detach().double(), c["ct"].detach().double(),
                               c["an"].double(), c["lab"], c["gt"].double())
    assert set(losses) == set(expected)
    for k in expected:
        assert losses[k].item() == pytest.approx(expected[k].item(), rel=1e-6), k
    # the continuous convention differs from the release by much more than that
    plain = ATSSLoss(head.loss_evaluator.box_coder)
    assert plain.legacy_plus_one is False and head.loss_evaluator.legacy_plus_one is True


def test_release_geometry_detections_match_release_post_processing():
    """ATSS / Dynamic ATSS inference with MODEL.LEGACY_PLUS_ONE True, rescaled to an original image and
    written as COCO xywh: every detection within 1e-3 px and 1e-5 in score of the release's
    post-processor + BoxList.resize + convert("xywh") re-derived on the same outputs."""
    import release_reference as ref

    h, w = ref.RELEASE_IMAGE_HW
    sizes = [(h, w), (200, 290)]          # (h, w) of the resized images
    originals = [(480, 384), (580, 400)]  # (w, h) of the original images
    for name in ("ATSS", "DYNAMIC_ATSS"):
        head = ref.build_release_head(name, seed=3)
        head.eval()
        feats = ref.release_features(seed=4)
        with torch.no_grad():
            dets, _ = head(ImageList(torch.zeros(2, 3, h, w), sizes), feats)
            logits, reg, ctr = head.head(feats)
        theirs = ref.grid_anchors(ref.RELEASE_IMAGE_HW)
        for i, ((ih, iw), (ow, oh)) in enumerate(zip(sizes, originals)):
            rb, rs, rl = ref.postprocess(ref.flat_levels(logits, i), ref.flat_levels(reg, i),
                                         [x[:, 0] for x in ref.flat_levels(ctr, i)], theirs, (iw, ih))
            assert 50 < len(rb) <= 100 and len(dets[i]) == len(rb)
            expected = ref.json_xywh(rb.double(), ow / iw, oh / ih)
            ours = dets[i].resize((ow, oh), legacy_plus_one=True)
            got = ours.xywh().double()
            # same detections: order both by (label, score)
            o1 = sorted(range(len(rs)), key=lambda k: (int(rl[k]), -float(rs[k])))
            o2 = sorted(range(len(rs)), key=lambda k: (int(ours.get_field("labels")[k]),
                                                      -float(ours.get_field("scores")[k])))
            assert [int(rl[k]) for k in o1] == [int(ours.get_field("labels")[k]) for k in o2]
            torch.testing.assert_close(ours.get_field("scores")[o2], rs[o1], rtol=0, atol=1e-5)
            torch.testing.assert_close(got[o2], expected[o1], rtol=0, atol=1e-3)


def test_centerness_targets_release_hand_values():
    """The ATSS release's target: l, t, r, b from the anchor centre value to the inclusive GT sides, i.e.
    each continuous distance minus 0.5: 1.5, 3.5, 5.5, 7.5 for the first case above."""
    anchors = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    gt = torch.tensor([[2.0, 0.0, 10.0, 12.0]])
    torch.testing.assert_close(centerness_targets(anchors, gt, legacy_plus_one=True),
                               torch.tensor([math.sqrt(1.5 / 5.5 * 3.5 / 7.5)]))
