import math
from pathlib import Path

import pytest
import torch

from maskrcnn_benchmark.config import cfg as _default_cfg
from maskrcnn_benchmark.modeling.assigners import FCOSAssigner
from maskrcnn_benchmark.modeling.dense_heads import set_num_classes
from maskrcnn_benchmark.modeling.assigners import assign_batch
from maskrcnn_benchmark.modeling.dense_heads.base import (DenseHead, DenseOutputs, DensePostProcessor,
                                                          ScoreRule)
from maskrcnn_benchmark.modeling.dense_heads.fcos import FCOSHead, FCOSLoss
from maskrcnn_benchmark.modeling.point_generator import distances_to_boxes, points_as_boxes
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.modeling.point_generator import PointGenerator
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList

ROOT = Path(__file__).resolve().parents[3]
IMAGE = (32, 32)
STRIDES = (8, 16)
RANGES = ((-1.0, 12.0), (12.0, math.inf))
NUM_CLASSES = 2


def _target(boxes, labels, size=IMAGE):
    t = BoxList(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), (size[1], size[0]))
    t.add_field("labels", torch.tensor(labels, dtype=torch.int64))
    return t


def _box_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enc = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union, inter / union - (enc - union) / enc


def _reference(logits, dist, ctr, points, gts, labels, loss_type, gamma=2.0, alpha=0.25):
    """FCOS loss (no centre sampling), loop form, one image."""
    gts = gts.tolist()
    cls_loss, reg_loss, ctr_loss, ctr_sum, num_pos = 0.0, 0.0, 0.0, 0.0, 0
    for i, (x, y) in enumerate(points.tolist()):
        level = 0 if i < 16 else 1
        lo, hi = RANGES[level]
        best, best_area = -1, math.inf
        for j, (x1, y1, x2, y2) in enumerate(gts):
            l, t, r, b = x - x1, y - y1, x2 - x, y2 - y
            if min(l, t, r, b) > 0 and lo <= max(l, t, r, b) <= hi and (x2 - x1) * (y2 - y1) < best_area:
                best, best_area = j, (x2 - x1) * (y2 - y1)
        label = int(labels[best]) if best >= 0 else 0
        for c in range(NUM_CLASSES):
            p = 1 / (1 + math.exp(-float(logits[i, c])))
            cls_loss += (-alpha * (1 - p) ** gamma * math.log(p) if label == c + 1
                         else -(1 - alpha) * p ** gamma * math.log(1 - p))
        if best >= 0:
            num_pos += 1
            x1, y1, x2, y2 = gts[best]
            l, t, r, b = x - x1, y - y1, x2 - x, y2 - y
            target_c = math.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))
            d = dist[i].tolist()
            pred = [x - d[0], y - d[1], x + d[2], y + d[3]]
            iou, giou = _box_iou(pred, gts[best])
            per = {"iou": -math.log(iou), "linear_iou": 1 - iou, "giou": 1 - giou}[loss_type]
            reg_loss += target_c * per
            ctr_sum += target_c
            o = float(ctr[i])
            ctr_loss += max(o, 0) - o * target_c + math.log(1 + math.exp(-abs(o)))
    return cls_loss / max(num_pos, 1), reg_loss / ctr_sum, ctr_loss / max(num_pos, 1), num_pos


def test_head_shapes_and_init():
    head = FCOSHead(16, 3, strides=STRIDES, num_convs=2, norm_reg_targets=True, num_groups=4,
                    reg_bias_init=4.0, centerness_on_reg=True)
    torch.testing.assert_close(head.bbox_pred.bias, torch.full((4,), 4.0))
    logits, dist, ctr = head([torch.randn(2, 16, 4, 4), torch.randn(2, 16, 2, 2)])
    assert [tuple(x.shape) for x in logits] == [(2, 3, 4, 4), (2, 3, 2, 2)]
    assert [tuple(x.shape) for x in dist] == [(2, 4, 4, 4), (2, 4, 2, 2)]
    assert [tuple(x.shape) for x in ctr] == [(2, 1, 4, 4), (2, 1, 2, 2)]
    assert all((d >= 0).all() for d in dist)
    # relu(scale(x)) * stride: with zero weights the distances are 4 strides
    with torch.no_grad():
        head.bbox_pred.weight.zero_()
    dist = head([torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2)])[1]
    assert torch.allclose(dist[0], torch.tensor(32.0)) and torch.allclose(dist[1], torch.tensor(64.0))


@pytest.mark.parametrize("loss_type", ["iou", "linear_iou", "giou"])
def test_loss_matches_loop_reference(loss_type):
    g = torch.Generator().manual_seed(0)
    points = PointGenerator(STRIDES).grid_points([(4, 4), (2, 2)])
    n = 20
    logits = torch.randn(1, n, NUM_CLASSES, generator=g)
    dist = torch.rand(1, n, 4, generator=g) * 10 + 1
    ctr = torch.randn(1, n, generator=g)
    gts = torch.tensor([[1.0, 2.0, 14.0, 13.0], [3.0, 1.0, 31.0, 30.0]])
    labels = torch.tensor([2, 1])
    loss = _fcos_loss(FCOSAssigner(STRIDES, RANGES), FCOSLoss(iou_loss_type=loss_type),
                      logits, dist, ctr, points, [_target(gts.tolist(), labels.tolist())])
    ref = _reference(logits[0], dist[0], ctr[0], torch.cat(points), gts, labels, loss_type)
    assert ref[3] > 0
    assert loss["loss_cls"].item() == pytest.approx(ref[0], rel=1e-4)
    assert loss["loss_reg"].item() == pytest.approx(ref[1], rel=1e-4)
    assert loss["loss_centerness"].item() == pytest.approx(ref[2], rel=1e-4)


def _fcos_loss(assigner, loss, logits, dist, ctr, points, targets):
    """The loss of an FCOS batch, assigned as the dense head does."""
    assignment = assign_batch(assigner, [points_as_boxes(p) for p in points], targets)
    return loss(DenseOutputs(logits, dist, ctr), points, targets, assignment)


def _module():
    torch.manual_seed(0)
    head = FCOSHead(16, NUM_CLASSES, strides=STRIDES, num_convs=1, num_groups=4, norm_reg_targets=True)
    post = DensePostProcessor(1000, 0.6, 100)
    return DenseHead(head, PointGenerator(STRIDES), FCOSAssigner(STRIDES, RANGES, 1.5),
                     FCOSLoss(iou_loss_type="giou"), post, distances_to_boxes,
                     ScoreRule(0.05, use_quality=True, transform=torch.sqrt))


def test_empty_gt_and_saturated_logits_give_finite_gradients():
    m = _module()
    images = ImageList(torch.zeros(2, 3, *IMAGE), [IMAGE] * 2)
    feats = [torch.randn(2, 16, 4, 4, requires_grad=True), torch.randn(2, 16, 2, 2, requires_grad=True)]
    empty = _target([], [])
    losses = m(images, feats, [empty, empty])[1]
    assert losses["loss_reg"].item() == 0.0 and losses["loss_centerness"].item() == 0.0
    sum(losses.values()).backward()
    assert all(torch.isfinite(f.grad).all() for f in feats)
    points = PointGenerator(STRIDES).grid_points([(4, 4), (2, 2)])
    logits = (torch.randint(0, 2, (2, 20, NUM_CLASSES)).float() * 200 - 100).requires_grad_()
    ctr = (torch.randint(0, 2, (2, 20)).float() * 200 - 100).requires_grad_()
    dist = (torch.rand(2, 20, 4) * 1e4).requires_grad_()
    for loss_type in ("iou", "linear_iou", "giou"):
        out = _fcos_loss(FCOSAssigner(STRIDES, RANGES), FCOSLoss(iou_loss_type=loss_type),
                         logits, dist, ctr, points, [_target([[1.0, 2.0, 14.0, 13.0]], [1]), empty])
        sum(out.values()).backward()
        assert all(torch.isfinite(v) for v in out.values())
    assert torch.isfinite(logits.grad).all() and torch.isfinite(dist.grad).all()
    assert torch.isfinite(ctr.grad).all()


def test_module_train_and_eval():
    m = _module()
    images = ImageList(torch.zeros(1, 3, *IMAGE), [(30, 28)])
    feats = [torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2)]
    losses = m(images, feats, [_target([[2.0, 3.0, 14.0, 12.0]], [2])])[1]
    assert set(losses) == {"loss_cls", "loss_reg", "loss_centerness"}
    m.eval()
    with torch.no_grad():
        m.head.cls_logits.bias.fill_(3.0)
    det = m(images, feats)[0][0]
    assert det.size == (28, 30) and 0 < len(det) <= 100
    scores = det.get_field("scores")
    assert (scores[:-1] >= scores[1:]).all() and (scores <= 1).all()


def _config(path, num_classes=None):
    cfg = _default_cfg.clone()
    cfg.merge_from_file(str(ROOT / path))
    cfg.MODEL.DEVICE = "cpu"
    if num_classes is not None:
        set_num_classes(cfg, num_classes)
    return cfg


def test_r50_config_builds():
    model = build_detection_model(_config("configs/fcos/fcos_R_50_FPN_1x.yaml"))
    assert model.rpn.head.num_classes == 80 and model.rpn.head.centerness_on_reg
    assert model.rpn.assigner.center_sampling_radius == 1.5
    assert model.rpn.prior_generator.offset == 0.5


def test_synthetic_config_train_and_eval_step():
    cfg = _config("configs/fcos/fcos_R_18_FPN_synthetic.yaml", num_classes=3)
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    image = torch.randn(3, 64, 80)
    losses = model([image], [_target([[5.0, 6.0, 40.0, 50.0]], [2], size=(64, 80))])
    sum(losses.values()).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        det = model([image])[0]
    assert det.size == (80, 64) and det.has_field("scores")
