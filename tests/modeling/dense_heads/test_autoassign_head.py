import math
from pathlib import Path

import pytest
import torch

from maskrcnn_benchmark.config import cfg as _default_cfg
from maskrcnn_benchmark.modeling.backbone import build_backbone
from maskrcnn_benchmark.modeling.dense_heads import set_num_classes
from maskrcnn_benchmark.modeling.dense_heads.autoassign import (AutoAssignLoss, AutoAssignModule,
                                                                CenterPrior)
from maskrcnn_benchmark.modeling.dense_heads.base import DenseOutputs, DensePostProcessor, ScoreRule
from maskrcnn_benchmark.modeling.dense_heads.fcos import FCOSHead
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.modeling.point_generator import PointGenerator
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList

ROOT = Path(__file__).resolve().parents[3]
IMAGE = (32, 32)
STRIDES = (8, 16)
NUM_CLASSES = 2


def _target(boxes, labels, size=IMAGE):
    t = BoxList(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), (size[1], size[0]))
    t.add_field("labels", torch.tensor(labels, dtype=torch.int64))
    return t


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _ious(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enc = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union, inter / union - (enc - union) / enc


def _reference(logits, dist, obj, points, gts, labels, mu, sigma):
    """AutoAssign losses in probability space as mmdetection computes them, loop form (1 image)."""
    eps = 1e-12
    pts, gts, labels = points.tolist(), gts.tolist(), labels.tolist()
    n, g = len(pts), len(gts)
    stride = [STRIDES[0] if i < 16 else STRIDES[1] for i in range(n)]
    preds = [[x - d[0], y - d[1], x + d[2], y + d[3]] for (x, y), d in zip(pts, dist.tolist())]
    inside = [[min(x - b[0], y - b[1], b[2] - x, b[3] - y) > 0 for b in gts] for x, y in pts]
    prior = [[0.0] * g for _ in range(n)]
    for i, (x, y) in enumerate(pts):
        for j, b in enumerate(gts):
            if inside[i][j]:
                c = labels[j] - 1
                v = 1.0
                for k, p in enumerate((x, y)):
                    ctr = (b[k] + b[k + 2]) / 2
                    v *= math.exp(-((p - ctr) / stride[i] - mu[c][k]) ** 2 / (2 * sigma[c][k] ** 2))
                prior[i][j] = v
    pos = 0.0
    for j, b in enumerate(gts):
        c = labels[j] - 1
        p_pos = [_sig(float(logits[i, c])) * _sig(float(obj[i])) * math.exp(-5 * (1 - _ious(preds[i], b)[1]))
                 for i in range(n)]
        cg = [math.exp(3 * p_pos[i]) * prior[i][j] for i in range(n)]
        s = sum(cg)
        bag = sum(p_pos[i] * cg[i] / s for i in range(n))
        pos += -math.log(bag)
    iou_max = [max(_ious(preds[i], b)[0] for b in gts) for i in range(n)]
    f = [1 / max(1 - v, eps) for v in iou_max]
    w = [[1.0] * NUM_CLASSES for _ in range(n)]
    for j in range(g):  # later GTs overwrite, as the reference
        members = [i for i in range(n) if inside[i][j]]
        lo, hi = min(f[i] for i in members), max(f[i] for i in members)
        for i in members:
            w[i][labels[j] - 1] = 1 - (f[i] - lo + eps) / (hi - lo + eps)
    neg = 0.0
    for i in range(n):
        for c in range(NUM_CLASSES):
            x = _sig(float(logits[i, c])) * _sig(float(obj[i])) * w[i][c]
            neg += x * x * -math.log(1 - x)
    prior_sum = sum(map(sum, prior))
    return 0.25 * pos / g, 0.75 * neg / max(prior_sum, 1), 0.75 * g / prior_sum


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    points = PointGenerator(STRIDES, offset=0.0).grid_points([(4, 4), (2, 2)])
    logits = torch.randn(1, 20, NUM_CLASSES, generator=g)
    obj = torch.randn(1, 20, generator=g)
    dist = torch.rand(1, 20, 4, generator=g) * 12 + 1
    gts = torch.tensor([[1.0, 2.0, 14.0, 13.0], [3.0, 1.0, 31.0, 30.0]])
    labels = torch.tensor([2, 2]) if seed else torch.tensor([2, 1])
    prior = CenterPrior(NUM_CLASSES, STRIDES)
    with torch.no_grad():
        prior.mean.copy_(torch.randn(NUM_CLASSES, 2, generator=g) * 0.3)
        prior.sigma.copy_(torch.rand(NUM_CLASSES, 2, generator=g) + 0.5)
    out = AutoAssignLoss(prior)(DenseOutputs(logits, dist, obj), points,
                                [_target(gts.tolist(), labels.tolist())])
    ref = _reference(logits[0], dist[0], obj[0], torch.cat(points), gts, labels,
                     prior.mean.tolist(), prior.sigma.tolist())
    assert out["loss_pos"].item() == pytest.approx(ref[0], rel=1e-4)
    assert out["loss_neg"].item() == pytest.approx(ref[1], rel=1e-4)
    assert out["loss_center"].item() == pytest.approx(ref[2], rel=1e-4)
    sum(out.values()).backward()
    assert prior.mean.grad.abs().sum() > 0 and prior.sigma.grad.abs().sum() > 0


def test_center_prior_hand_values_and_force_topk():
    prior = CenterPrior(1, (8,))
    points = [torch.tensor([[8.0, 8.0], [16.0, 8.0], [40.0, 40.0]])]
    log_g, inside = prior(points, torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([1]))
    # centre (8, 8): distances 0 and 1 stride -> G = 1 and exp(-1/2); (16, 8) is on the border
    torch.testing.assert_close(log_g[:2, 0], torch.tensor([0.0, -0.5]))
    assert inside[:, 0].tolist() == [True, False, False]
    tiny = torch.tensor([[41.0, 41.0, 42.0, 42.0]])  # no point strictly inside
    assert not prior(points, tiny, torch.tensor([1]))[1].any()
    forced = CenterPrior(1, (8,), force_topk=True, topk=1)(points, tiny, torch.tensor([1]))[1]
    assert forced[:, 0].tolist() == [False, False, True]


def _module():
    torch.manual_seed(0)
    head = FCOSHead(16, NUM_CLASSES, strides=STRIDES, num_convs=1, prior_prob=0.02, num_groups=4,
                    centerness_on_reg=True, norm_reg_targets=True, reg_bias_init=4.0)
    post = DensePostProcessor(1000, 0.6, 100)
    return AutoAssignModule(head, PointGenerator(STRIDES, offset=0.0),
                            AutoAssignLoss(CenterPrior(NUM_CLASSES, STRIDES)), post,
                            ScoreRule(0.05, use_quality=True))


def test_empty_gt_tiny_gt_and_saturated_logits_give_finite_gradients():
    m = _module()
    assert {"center_prior.mean", "center_prior.sigma"} <= set(dict(m.named_parameters()))
    images = ImageList(torch.zeros(2, 3, *IMAGE), [IMAGE] * 2)
    feats = [torch.randn(2, 16, 4, 4, requires_grad=True), torch.randn(2, 16, 2, 2, requires_grad=True)]
    empty = _target([], [])
    losses = m(images, feats, [empty, empty])[1]
    assert losses["loss_pos"].item() == 0.0 and losses["loss_center"].item() == 0.0
    sum(losses.values()).backward()
    assert all(torch.isfinite(f.grad).all() for f in feats)
    # a GT between points (no point inside) next to a normal one: finite, bounded losses
    tiny = _target([[1.0, 1.0, 5.0, 5.0], [3.0, 1.0, 31.0, 30.0]], [1, 2])
    losses = m(images, feats, [tiny, empty])[1]
    assert all(torch.isfinite(v) and v.item() < 1e3 for v in losses.values())
    points = PointGenerator(STRIDES, offset=0.0).grid_points([(4, 4), (2, 2)])
    sat = (torch.randint(0, 2, (2, 20, NUM_CLASSES)).float() * 200 - 100).requires_grad_()
    obj = (torch.randint(0, 2, (2, 20)).float() * 200 - 100).requires_grad_()
    dist = (torch.rand(2, 20, 4) * 1e4).requires_grad_()
    out = m.loss_evaluator(DenseOutputs(sat, dist, obj), points, [tiny, empty])
    sum(out.values()).backward()
    assert all(torch.isfinite(v) for v in out.values())
    for t in (sat, obj, dist, m.center_prior.mean, m.center_prior.sigma):
        assert torch.isfinite(t.grad).all()


def test_module_eval_scores_are_products():
    m = _module()
    m.eval()
    with torch.no_grad():
        m.head.cls_logits.bias.fill_(3.0)
    images = ImageList(torch.zeros(1, 3, *IMAGE), [(30, 28)])
    det = m(images, [torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2)])[0][0]
    assert det.size == (28, 30) and 0 < len(det) <= 100
    assert det.get_field("scores").max() <= _sig(3.0) * 1.0001


def _config(path, num_classes=None):
    cfg = _default_cfg.clone()
    cfg.merge_from_file(str(ROOT / path))
    cfg.MODEL.DEVICE = "cpu"
    if num_classes is not None:
        set_num_classes(cfg, num_classes)
    return cfg


def test_fpn_relu_before_extra_convs():
    cfg = _config("configs/autoassign/autoassign_R_18_FPN_synthetic.yaml")
    backbone = build_backbone(cfg).eval()
    top = backbone.fpn.top_blocks
    assert top.relu_before_p6 and top.use_p5
    p5 = torch.randn(1, backbone.out_channels, 3, 3)
    p6, p7 = top(None, p5)
    torch.testing.assert_close(p6, top.p6(p5.relu()))
    torch.testing.assert_close(p7, top.p7(p6.relu()))
    cfg.MODEL.FPN.RELU_BEFORE_EXTRA_CONVS = False
    assert not build_backbone(cfg).fpn.top_blocks.relu_before_p6


def test_r50_config_builds():
    cfg = _config("configs/autoassign/autoassign_R_50_FPN_1x.yaml")
    assert cfg.SOLVER.WARMUP_FACTOR == 0.001 and cfg.SOLVER.WARMUP_ITERS == 1000
    assert cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0 and tuple(cfg.SOLVER.STEPS) == (60000, 82500)
    assert cfg.INPUT.TO_BGR255 and list(cfg.INPUT.PIXEL_STD) == [1.0, 1.0, 1.0]
    model = build_detection_model(cfg)
    assert model.rpn.head.num_classes == 80 and model.rpn.center_prior.mean.shape == (80, 2)
    assert model.rpn.prior_generator.offset == 0.0
    assert model.backbone.fpn.top_blocks.relu_before_p6


def test_synthetic_config_train_and_eval_step():
    cfg = _config("configs/autoassign/autoassign_R_18_FPN_synthetic.yaml", num_classes=3)
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    image = torch.randn(3, 64, 80)
    losses = model([image], [_target([[5.0, 6.0, 40.0, 50.0]], [2], size=(64, 80))])
    assert set(losses) == {"loss_pos", "loss_neg", "loss_center"}
    sum(losses.values()).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        det = model([image])[0]
    assert det.size == (80, 64) and det.has_field("scores")


def test_center_loss_counts_every_gt():
    """Centre loss = 0.75 * mean over images of num_gt / sum G, num_gt counting every GT (also one
    with no point inside: mmdetection, shared/ALGORITHMS.md); an image with no inside point adds 0."""
    points = PointGenerator(STRIDES, offset=0.0).grid_points([(4, 4), (2, 2)])  # x, y in {0, 8, 16, 24}
    big, small = [1.0, 2.0, 14.0, 13.0], [9.0, 9.0, 12.0, 12.0]  # big holds only (8, 8); small none
    # G at (8, 8) for the big GT, centre (7.5, 7.5), stride 8, mu 0, sigma 1: exp(-2 * (0.5/8)^2 / 2)
    g_big = math.exp(-((0.5 / 8) ** 2))
    loss = AutoAssignLoss(CenterPrior(NUM_CLASSES, STRIDES))
    zeros = DenseOutputs(torch.zeros(2, 20, NUM_CLASSES), torch.ones(2, 20, 4), torch.zeros(2, 20))
    out = loss(zeros, points, [_target([big, small], [1, 2]), _target([small], [1])])
    assert out["loss_center"].item() == pytest.approx(0.75 * (2 / g_big + 0.0) / 2, rel=1e-6)
    one = DenseOutputs(zeros.cls_logits[:1], zeros.box_regression[:1], zeros.quality[:1])
    out = loss(one, points, [_target([big], [1])])
    assert out["loss_center"].item() == pytest.approx(0.75 * 1 / g_big, rel=1e-6)
