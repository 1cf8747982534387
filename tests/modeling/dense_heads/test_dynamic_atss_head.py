import math

import pytest
import torch

from maskrcnn_benchmark.modeling.anchor_generator import AnchorGenerator
from maskrcnn_benchmark.modeling.assigners import (ATSSAssigner, DynamicATSSAssigner, Predictions,
                                                   assign_batch)
from maskrcnn_benchmark.modeling.box_coder import BoxCoder
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS
from maskrcnn_benchmark.modeling.dense_heads.atss import ATSSHead
from maskrcnn_benchmark.modeling.dense_heads.base import (DenseHead, DensePostProcessor, ScoreRule,
                                                          permute_and_flatten)
from maskrcnn_benchmark.modeling.dense_heads.dynamic_atss import DynamicATSSLoss
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList

C = 3
STRIDES = (8, 16)
IMAGE = (64, 64)


def _dyn_module(seed=0):
    torch.manual_seed(seed)
    head = ATSSHead(16, C, num_convs=1, num_levels=2, num_groups=4)
    # larger box outputs than the N(0, 0.01) init so predictions differ from anchors
    torch.nn.init.normal_(head.bbox_pred.weight, std=0.05)
    gen = AnchorGenerator(sizes=(32, 64), strides=STRIDES)
    coder = BoxCoder()
    loss = DynamicATSSLoss(coder, gamma=2.0, reg_loss_weight=2.0)
    post = DensePostProcessor(1000, 0.6, 100)
    return DenseHead(head, gen, DynamicATSSAssigner(topk=3), loss, post, coder.decode,
                     ScoreRule(0.05, use_quality=True, transform=torch.sqrt))


def _feats(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, 16, IMAGE[0] // s, IMAGE[1] // s, generator=g) for s in STRIDES]
    return ImageList(torch.zeros(batch, 3, *IMAGE), [IMAGE] * batch), feats


def _tgt(boxes, labels):
    t = BoxList(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), (IMAGE[1], IMAGE[0]))
    t.add_field("labels", torch.tensor(labels, dtype=torch.int64))
    return t


def _giou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enc = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (enc - union) / enc


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _flat(outputs, i, k):
    return torch.cat([permute_and_flatten(x[i:i + 1], 1, k)[0] for x in outputs]).double()


def test_loss_matches_plain_recomputation():
    module = _dyn_module()
    module.train()
    images, feats = _feats()
    targets = [_tgt([[4, 6, 40, 44], [20, 18, 62, 60]], [1, 3]), _tgt([[10, 30, 34, 62]], [2])]
    losses = module(images, feats, targets)[1]
    assert set(losses) == {"loss_cls", "loss_reg", "loss_iou"}

    logits, reg, iou = module.head(feats)
    anchors_lvl = module.prior_generator(feats)
    anchors = torch.cat(anchors_lvl)
    coder = BoxCoder()
    cls_sum = reg_sum = iou_sum = q_sum = 0.0
    num_pos = 0
    for i, t in enumerate(targets):
        lg, rg, io = _flat(logits, i, C), _flat(reg, i, 4), _flat(iou, i, 1)[:, 0]
        pred = coder.decode(rg.float(), anchors)
        res = DynamicATSSAssigner(topk=3)(anchors_lvl, t.bbox, t.get_field("labels"), pred)
        for n in range(anchors.shape[0]):
            q = res.quality[n].item()
            for c in range(C):
                p = _sig(lg[n, c].item())
                if res.labels[n] == c + 1:
                    cls_sum += -abs(q - p) ** 2 * (q * math.log(p) + (1 - q) * math.log(1 - p))
                else:
                    cls_sum += -(p ** 2) * math.log(1 - p)
            if res.gt_inds[n] < 0:
                continue
            num_pos += 1
            gt = t.bbox[res.gt_inds[n]].tolist()
            # q is the IoU of the detached prediction with its GT
            g = _giou(pred[n].tolist(), gt)
            box = pred[n].tolist()
            ix = max(0.0, min(box[2], gt[2]) - max(box[0], gt[0]))
            iy = max(0.0, min(box[3], gt[3]) - max(box[1], gt[1]))
            un = (box[2] - box[0]) * (box[3] - box[1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - ix * iy
            assert q == pytest.approx(ix * iy / un, rel=1e-4)
            reg_sum += q * (1 - g)
            q_sum += q
            o = _sig(io[n].item())
            iou_sum += -(q * math.log(o) + (1 - q) * math.log(1 - o))
    assert num_pos > 0 and q_sum > 0
    assert losses["loss_cls"].item() == pytest.approx(cls_sum / num_pos, rel=1e-4)
    assert losses["loss_reg"].item() == pytest.approx(2.0 * reg_sum / q_sum, rel=1e-4)
    assert losses["loss_iou"].item() == pytest.approx(iou_sum / num_pos, rel=1e-4)


def test_reduces_to_atss_positives_when_predictions_equal_anchors():
    module = _dyn_module()
    torch.nn.init.zeros_(module.head.bbox_pred.weight)  # deltas 0 -> predicted boxes == anchors
    images, feats = _feats(batch=1)
    t = _tgt([[4, 6, 40, 44], [20, 18, 62, 60]], [1, 3])
    anchors_lvl = module.prior_generator(feats)
    res = assign_batch(module.assigner, anchors_lvl, [t],
                       Predictions(boxes=torch.cat(anchors_lvl)[None]))
    quality, pos = res.quality, res.pos
    ref = ATSSAssigner(topk=3)(anchors_lvl, t.bbox, t.get_field("labels"))
    assert torch.equal(pos[0], ref.pos_mask)
    torch.testing.assert_close(quality[0], ref.quality)


def test_empty_gt_finite_and_backward():
    module = _dyn_module()
    module.train()
    images, feats = _feats()
    losses = module(images, feats, [_tgt([], []), _tgt([], [])])[1]
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_reg"].item() == 0 and losses["loss_iou"].item() == 0
    sum(losses.values()).backward()
    assert module.head.bbox_pred.weight.grad is not None
    assert module.head.centerness.weight.grad is not None


def test_zero_quality_takes_no_positive_path():
    module = _dyn_module()
    module.train()
    torch.nn.init.zeros_(module.head.bbox_pred.weight)
    with torch.no_grad():  # shift every prediction 100 anchor widths away: P = 0 for all anchors
        module.head.bbox_pred.bias.copy_(torch.tensor([1000.0, 1000.0, 0.0, 0.0]))
    images, feats = _feats(batch=1)
    losses = module(images, feats, [_tgt([[4, 6, 40, 44]], [2])])[1]
    assert losses["loss_reg"].item() == 0 and losses["loss_iou"].item() == 0
    assert torch.isfinite(losses["loss_cls"])
    sum(losses.values()).backward()
    assert torch.isfinite(module.head.bbox_pred.weight.grad).all()


def test_inference_output_contract():
    module = _dyn_module()
    torch.nn.init.constant_(module.head.cls_logits.bias, 1.0)
    module.eval()
    images, feats = _feats(seed=5)
    dets, _ = module(images, feats)
    for det in dets:
        s = det.get_field("scores")
        assert 0 < len(det) <= 100 and (s[:-1] >= s[1:]).all()
        lab = det.get_field("labels")
        assert lab.min() >= 1 and lab.max() <= C
        assert (det.bbox >= 0).all() and (det.bbox[:, 2] <= 64).all() and (det.bbox[:, 3] <= 64).all()


def test_registered():
    assert "DYNAMIC_ATSS" in DENSE_HEADS


@pytest.mark.parametrize("seed", [0, 1])
def test_release_geometry_losses_match_release_formulas(seed):
    """Dynamic ATSS with MODEL.LEGACY_PLUS_ONE True: the release's prepare_targets on its decoded detached
    predictions (P + Q), then each of its loss terms (GFL-form classification, q-weighted GIoU without
    "+1" areas, IoU-branch BCE) within 1e-6 relative."""
    import release_reference as ref

    head = ref.build_release_head("DYNAMIC_ATSS", seed=seed, std=0.05)
    head.train()
    feats = ref.release_features(seed=seed + 20)
    h, w = ref.RELEASE_IMAGE_HW
    gts, labels, targets = ref.release_batch(("random", "crowded"), seed)
    losses = head(ImageList(torch.zeros(2, 3, h, w), [(h, w)] * 2), feats, targets)[1]

    logits, reg, iou = head.head(feats)
    theirs = ref.grid_anchors(ref.RELEASE_IMAGE_HW)
    anchors = torch.cat(theirs)
    cat = {"lab": [], "gt": [], "q": [], "lg": [], "rg": [], "io": []}
    for i in range(2):
        rg = torch.cat(ref.flat_levels(reg, i)).detach()
        lab, gt_idx, q = ref.prepare_targets(theirs, gts[i], labels[i], pred_boxes=ref.decode(rg, anchors))
        cat["lab"].append(lab)
        cat["gt"].append(gts[i][gt_idx])
        cat["q"].append(torch.where(lab > 0, q, torch.zeros_like(q)))
        cat["lg"].append(torch.cat(ref.flat_levels(logits, i)))
        cat["rg"].append(rg)
        cat["io"].append(torch.cat(ref.flat_levels(iou, i))[:, 0])
    c = {k: torch.cat(v) for k, v in cat.items()}
    expected = ref.dynamic_atss_losses(c["lg"].detach().double(), c["rg"].double(), c["io"].detach().double(),
                                       anchors.repeat(2, 1).double(), c["lab"], c["gt"].double(),
                                       c["q"].double())
    assert set(losses) == set(expected)
    for k in expected:
        assert losses[k].item() == pytest.approx(expected[k].item(), rel=1e-6), k
