import math
from pathlib import Path

import pytest
import torch

from maskrcnn_benchmark.config import cfg as _default_cfg
from maskrcnn_benchmark.modeling.anchor_generator import AnchorGenerator
from maskrcnn_benchmark.modeling.assigners import GTBatch
from maskrcnn_benchmark.modeling.box_coder import BoxCoder
from maskrcnn_benchmark.modeling.dense_heads import num_classes_key, set_num_classes
from maskrcnn_benchmark.modeling.dense_heads.free_anchor import FreeAnchorLoss
from maskrcnn_benchmark.modeling.dense_heads.base import DenseHead, DenseOutputs
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.structures.bounding_box import BoxList

ROOT = Path(__file__).resolve().parents[3]
IMAGE = (32, 32)
NUM_CLASSES = 2
BAG = 6


def _target(boxes, labels, size=IMAGE):
    t = BoxList(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), (size[1], size[0]))
    t.add_field("labels", torch.tensor(labels, dtype=torch.int64))
    return t


def _anchors():
    gen = AnchorGenerator(sizes=(16, 32), aspect_ratios=(0.5, 1.0, 2.0), strides=(8, 16))
    return gen.grid_anchors([(4, 4), (2, 2)])


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _decode(d, a):
    aw, ah = a[2] - a[0], a[3] - a[1]
    cx, cy = a[0] + aw / 2 + d[0] / 10 * aw, a[1] + ah / 2 + d[1] / 10 * ah
    w, h = math.exp(d[2] / 5) * aw, math.exp(d[3] / 5) * ah
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _encode(b, a):
    aw, ah = a[2] - a[0], a[3] - a[1]
    bw, bh = b[2] - b[0], b[3] - b[1]
    return [10 * ((b[0] + bw / 2) - (a[0] + aw / 2)) / aw, 10 * ((b[1] + bh / 2) - (a[1] + ah / 2)) / ah,
            5 * math.log(bw / aw), 5 * math.log(bh / ah)]


def _reference(logits, reg, anchors, gts, labels, alpha=0.5, gamma=2.0, t1=0.6, beta=0.11, w_loc=0.75):
    """FreeAnchor losses in probability space, loop form (one image)."""
    anchors, gts, labels = anchors.tolist(), gts.tolist(), labels.tolist()
    n, g = len(anchors), len(gts)
    prob = [[1 / (1 + math.exp(-float(logits[i, c]))) for c in range(NUM_CLASSES)] for i in range(n)]
    preds = [_decode(reg[i].tolist(), anchors[i]) for i in range(n)]
    pos = 0.0
    box_prob = [[0.0] * NUM_CLASSES for _ in range(n)]
    for j in range(g):
        ious_pred = [_iou(gts[j], preds[i]) for i in range(n)]
        t2 = max(max(ious_pred), t1 + 1e-12)
        for i in range(n):
            p = min(max((ious_pred[i] - t1) / (t2 - t1), 0.0), 1.0)
            box_prob[i][labels[j] - 1] = max(box_prob[i][labels[j] - 1], p)
        ious_anchor = [_iou(gts[j], anchors[i]) for i in range(n)]
        bag = sorted(range(n), key=lambda i: -ious_anchor[i])[:BAG]
        ps = []
        for i in bag:
            t = _encode(gts[j], anchors[i])
            loc = 0.0
            for k in range(4):
                d = abs(float(reg[i, k]) - t[k])
                loc += 0.5 * d * d / beta if d < beta else d - 0.5 * beta
            ps.append(prob[i][labels[j] - 1] * math.exp(-w_loc * loc))
        ws = [1 / (1 - p) for p in ps]
        bag_p = sum(w * p for w, p in zip(ws, ps)) / sum(ws)
        pos += -alpha * math.log(bag_p)
    neg = 0.0
    for i in range(n):
        for c in range(NUM_CLASSES):
            x = prob[i][c] * (1 - box_prob[i][c])
            neg += (1 - alpha) * x ** gamma * -math.log(1 - x)
    return pos / max(g, 1), neg / max(g * BAG, 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    anchors = _anchors()
    n = sum(a.shape[0] for a in anchors)
    logits = torch.randn(1, n, NUM_CLASSES, generator=g)
    reg = torch.randn(1, n, 4, generator=g) * 0.3
    gts = torch.tensor([[2.0, 3.0, 14.0, 12.0], [10.0, 6.0, 30.0, 29.0]])
    labels = torch.tensor([1, 1]) if seed else torch.tensor([1, 2])
    # make some predictions overlap a GT well so the saturated linear part is exercised
    loss = FreeAnchorLoss(BoxCoder(), bag_size=BAG)(DenseOutputs(logits, reg), anchors,
                                                    [_target(gts.tolist(), labels.tolist())])
    ref_pos, ref_neg = _reference(logits[0], reg[0], torch.cat(anchors), gts, labels)
    assert loss["loss_pos"].item() == pytest.approx(ref_pos, rel=1e-4)
    assert loss["loss_neg"].item() == pytest.approx(ref_neg, rel=1e-4)


def test_positive_anchor_prob_is_max_over_same_class_objects():
    loss = FreeAnchorLoss(BoxCoder(), iou_threshold=0.5)
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 7.5], [20.0, 20.0, 30.0, 30.0]])
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 6.0]])
    gt = GTBatch.from_lists([gts], [torch.tensor([2, 2])])
    prob = loss.positive_anchor_prob(pred[None], gt, 3)[0]
    # GT 0: IoUs 1, 0.75, 0 -> (iou - 0.5) / 0.5 = 1, 0.5, 0; GT 1: IoUs 0.6, 0.8, 0 -> t2 = 0.8:
    # 1/3, 1, 0. Class 2 takes the max.
    torch.testing.assert_close(prob[:, 1], torch.tensor([1.0, 1.0, 0.0]))
    assert prob[:, 0].abs().sum() == 0 and prob[:, 2].abs().sum() == 0


def test_empty_gt_and_saturated_logits_give_finite_gradients():
    anchors = _anchors()
    n = sum(a.shape[0] for a in anchors)
    empty = _target([], [])
    logits = torch.randn(2, n, NUM_CLASSES, requires_grad=True)
    reg = torch.randn(2, n, 4, requires_grad=True)
    out = FreeAnchorLoss(BoxCoder(), bag_size=BAG)(DenseOutputs(logits, reg), anchors, [empty, empty])
    assert out["loss_pos"].item() == 0.0 and torch.isfinite(out["loss_neg"])
    sum(out.values()).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(reg.grad).all()
    sat = (torch.randint(0, 2, (2, n, NUM_CLASSES)).float() * 200 - 100).requires_grad_()
    reg = (torch.randn(2, n, 4) * 50).requires_grad_()
    out = FreeAnchorLoss(BoxCoder(), bag_size=BAG)(
        DenseOutputs(sat, reg), anchors, [_target([[2.0, 3.0, 14.0, 12.0], [10.0, 6.0, 30.0, 29.0]], [1, 2]), empty])
    sum(out.values()).backward()
    assert all(torch.isfinite(v) for v in out.values())
    assert torch.isfinite(sat.grad).all() and torch.isfinite(reg.grad).all()


def _config(path, num_classes=None):
    cfg = _default_cfg.clone()
    cfg.merge_from_file(str(ROOT / path))
    cfg.MODEL.DEVICE = "cpu"
    if num_classes is not None:
        set_num_classes(cfg, num_classes)
    return cfg


def test_r50_config_builds():
    cfg = _config("configs/free_anchor/free_anchor_R_50_FPN_1x.yaml")
    assert num_classes_key(cfg) == "MODEL.RETINANET.NUM_CLASSES"
    assert cfg.SOLVER.CLIP_GRAD_NORM == 35.0
    model = build_detection_model(cfg)
    assert isinstance(model.rpn, DenseHead) and model.rpn.head.num_anchors == 9
    assert model.rpn.assigner is None
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.rpn.modules())
    assert model.rpn.post_processor.nms_thresh == 0.5
    assert model.rpn.loss_evaluator.bag_size == 50
    sizes = model.rpn.prior_generator.grid_anchors([(1, 1)] * 5)
    side = sizes[0][:, 2] - sizes[0][:, 0]
    assert side.max() <= 32 * 2 ** (2 / 3) * 2 ** 0.5 + 1e-3  # octave base scale 4 x stride 8


def test_synthetic_config_train_and_eval_step():
    cfg = _config("configs/free_anchor/free_anchor_R_18_FPN_synthetic.yaml", num_classes=3)
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    image = torch.randn(3, 64, 80)
    losses = model([image], [_target([[5.0, 6.0, 40.0, 50.0]], [2], size=(64, 80))])
    assert set(losses) == {"loss_pos", "loss_neg"}
    sum(losses.values()).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        det = model([image])[0]
    assert det.size == (80, 64) and det.has_field("scores")
