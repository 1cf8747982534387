import math
from pathlib import Path

import pytest
import torch

from maskrcnn_benchmark.config import cfg as _default_cfg
from maskrcnn_benchmark.modeling.anchor_generator import AnchorGenerator
from maskrcnn_benchmark.modeling.assigners import MaxIoUAssigner
from maskrcnn_benchmark.modeling.box_coder import BoxCoder
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS, set_num_classes
from maskrcnn_benchmark.modeling.assigners import assign_batch
from maskrcnn_benchmark.modeling.dense_heads.base import (DenseHead, DenseOutputs, DensePostProcessor,
                                                          ScoreRule)
from maskrcnn_benchmark.modeling.dense_heads.retinanet import RetinaNetHead, RetinaNetLoss
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList

IMAGE = (32, 32)  # (h, w): a 4x4 + 2x2 pyramid at strides 8, 16
STRIDES = (8, 16)
NUM_CLASSES = 2
ROOT = Path(__file__).resolve().parents[3]


def _target(boxes, labels, size=IMAGE):
    t = BoxList(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), (size[1], size[0]))
    t.add_field("labels", torch.tensor(labels, dtype=torch.int64))
    return t


def _anchors():
    gen = AnchorGenerator(sizes=(16, 32), aspect_ratios=(0.5, 1.0, 2.0), strides=STRIDES)
    return gen.grid_anchors([(4, 4), (2, 2)]), gen.num_anchors_per_location


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _reference_loss(logits, reg, anchors, gts, labels, gamma=2.0, alpha=0.25, beta=0.11, norm=4.0):
    """RetinaNet loss of the ATSS release, loop form (one image)."""
    anchors, gts = anchors.tolist(), gts.tolist()
    n, g = len(anchors), len(gts)
    ious = [[_iou(gts[j], anchors[i]) for i in range(n)] for j in range(g)]
    cls_loss, reg_loss, num_pos = 0.0, 0.0, 0
    for i in range(n):
        col = [ious[j][i] for j in range(g)]
        best = max(col)
        j = col.index(best)
        pos = best >= 0.5 or any(max(ious[k]) > 0 and ious[k][i] == max(ious[k]) for k in range(g))
        label = int(labels[j]) if pos else (-1 if best >= 0.4 else 0)
        if label >= 0:
            for c in range(logits.shape[1]):
                p = 1 / (1 + math.exp(-float(logits[i, c])))
                if label == c + 1:
                    cls_loss += -alpha * (1 - p) ** gamma * math.log(p)
                else:
                    cls_loss += -(1 - alpha) * p ** gamma * math.log(1 - p)
        if pos:
            num_pos += 1
            a, b = anchors[i], gts[j]
            aw, ah = a[2] - a[0], a[3] - a[1]
            bw, bh = b[2] - b[0], b[3] - b[1]
            t = [10 * ((b[0] + bw / 2) - (a[0] + aw / 2)) / aw, 10 * ((b[1] + bh / 2) - (a[1] + ah / 2)) / ah,
                 5 * math.log(bw / aw), 5 * math.log(bh / ah)]
            for k in range(4):
                d = abs(float(reg[i, k]) - t[k])
                reg_loss += 0.5 * d * d / beta if d < beta else d - 0.5 * beta
    return cls_loss / (num_pos + 1), reg_loss / max(1, num_pos * norm), num_pos


def test_head_shapes_and_init():
    head = RetinaNetHead(16, 3, num_anchors=9, num_convs=2, prior_prob=0.01)
    names = set(dict(head.named_parameters()))
    assert {"cls_tower.0.weight", "cls_tower.2.bias", "bbox_tower.2.weight", "cls_logits.bias",
            "bbox_pred.weight"} <= names
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in head.modules())
    torch.testing.assert_close(head.cls_logits.bias, torch.full((27,), -math.log(99.0)))
    logits, reg = head([torch.randn(2, 16, 4, 5), torch.randn(2, 16, 2, 3)])
    assert [tuple(x.shape) for x in logits] == [(2, 27, 4, 5), (2, 27, 2, 3)]
    assert [tuple(x.shape) for x in reg] == [(2, 36, 4, 5), (2, 36, 2, 3)]


def test_gn_head_option_keeps_logits_position_dependent_at_init():
    """MODEL.RETINANET.USE_GN: GroupNorm after each tower conv (names as the ATSS towers). Without
    it the N(0, 0.01) towers shrink the signal ~4x per conv, so at init the logits hardly vary
    over positions: the plateau on which the from-scratch synthetic RetinaNet diverged and
    FreeAnchor stalled."""
    torch.manual_seed(0)
    plain = RetinaNetHead(64, 3, num_anchors=9, num_convs=2)
    gn = RetinaNetHead(64, 3, num_anchors=9, num_convs=2, num_groups=32)
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in gn.modules()) == 4
    assert {"cls_tower.0.weight", "cls_tower.1.weight", "cls_tower.3.weight", "cls_tower.4.bias",
            "bbox_tower.3.weight"} <= set(dict(gn.named_parameters()))
    torch.testing.assert_close(gn.cls_logits.bias, torch.full((27,), -math.log(99.0)))
    x = [torch.randn(2, 64, 8, 8)]
    spread = lambda head: head(x)[0][0].std(dim=(2, 3)).mean().item()  # noqa: E731
    assert spread(plain) < 0.02 < 0.05 < spread(gn)


@pytest.mark.parametrize("path", ["configs/retinanet/retinanet_R_18_FPN_synthetic.yaml",
                                  "configs/free_anchor/free_anchor_R_18_FPN_synthetic.yaml"])
def test_synthetic_configs_use_gn_towers(path):
    """Trained from scratch, the synthetic RetinaNet / FreeAnchor need the GN towers."""
    cfg = _config(path, num_classes=3)
    assert cfg.MODEL.RETINANET.USE_GN and not _default_cfg.MODEL.RETINANET.USE_GN
    model = build_detection_model(cfg)
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in model.rpn.head.modules()) == 4


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    anchors, a = _anchors()
    n = sum(x.shape[0] for x in anchors)
    logits = torch.randn(1, n, NUM_CLASSES, generator=g)
    reg = torch.randn(1, n, 4, generator=g) * 0.5
    gts = torch.tensor([[2.0, 3.0, 14.0, 12.0], [10.0, 6.0, 30.0, 29.0]])
    labels = torch.tensor([1, 2])
    loss = _retina_loss(MaxIoUAssigner(0.5, 0.4), RetinaNetLoss(BoxCoder()), logits, reg, anchors,
                        [_target(gts.tolist(), labels.tolist())])
    ref_cls, ref_reg, num_pos = _reference_loss(logits[0], reg[0], torch.cat(anchors), gts, labels)
    assert num_pos > 0
    assert loss["loss_cls"].item() == pytest.approx(ref_cls, rel=1e-4)
    assert loss["loss_reg"].item() == pytest.approx(ref_reg, rel=1e-4)


def _retina_loss(assigner, loss, logits, reg, anchors, targets):
    """The loss of a RetinaNet batch, assigned as the dense head does."""
    return loss(DenseOutputs(logits, reg), anchors, targets, assign_batch(assigner, anchors, targets))


def _module():
    torch.manual_seed(0)
    head = RetinaNetHead(16, NUM_CLASSES, num_anchors=3, num_convs=1)
    gen = AnchorGenerator(sizes=(16, 32), aspect_ratios=(0.5, 1.0, 2.0), strides=STRIDES)
    coder = BoxCoder()
    post = DensePostProcessor(1000, 0.5, 100)
    return DenseHead(head, gen, MaxIoUAssigner(), RetinaNetLoss(coder), post, coder.decode,
                     ScoreRule(0.05))


def test_empty_gt_and_saturated_logits_give_finite_gradients():
    m = _module()
    images = ImageList(torch.zeros(2, 3, *IMAGE), [IMAGE] * 2)
    feats = [torch.randn(2, 16, 4, 4, requires_grad=True), torch.randn(2, 16, 2, 2, requires_grad=True)]
    empty = _target([], [])
    losses = m(images, feats, [empty, empty])[1]
    assert losses["loss_reg"].item() == 0.0 and torch.isfinite(losses["loss_cls"])
    sum(losses.values()).backward()
    assert all(torch.isfinite(f.grad).all() for f in feats)
    # saturated logits straight into the loss
    anchors, _ = _anchors()
    n = sum(x.shape[0] for x in anchors)
    logits = (torch.randint(0, 2, (2, n, NUM_CLASSES)).float() * 200 - 100).requires_grad_()
    reg = (torch.randn(2, n, 4) * 50).requires_grad_()
    t = _target([[2.0, 3.0, 14.0, 12.0]], [1])
    out = _retina_loss(MaxIoUAssigner(), RetinaNetLoss(BoxCoder()), logits, reg, anchors, [t, empty])
    sum(out.values()).backward()
    assert all(torch.isfinite(v) for v in out.values())
    assert torch.isfinite(logits.grad).all() and torch.isfinite(reg.grad).all()


def test_module_train_and_eval():
    m = _module()
    images = ImageList(torch.zeros(1, 3, *IMAGE), [(30, 28)])
    feats = [torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2)]
    losses = m(images, feats, [_target([[2.0, 3.0, 14.0, 12.0]], [2])])[1]
    assert set(losses) == {"loss_cls", "loss_reg"}
    m.eval()
    with torch.no_grad():
        m.head.cls_logits.bias.fill_(3.0)  # every candidate above the threshold
    det = m(images, feats)[0][0]
    assert det.size == (28, 30) and 0 < len(det) <= 100
    assert det.get_field("labels").min() >= 1 and det.get_field("labels").max() <= NUM_CLASSES
    scores = det.get_field("scores")
    assert (scores[:-1] >= scores[1:]).all()
    assert (det.bbox[:, 2] <= 28).all() and (det.bbox[:, 3] <= 30).all()


def _config(path, num_classes=None):
    cfg = _default_cfg.clone()
    cfg.merge_from_file(str(ROOT / path))
    cfg.MODEL.DEVICE = "cpu"
    if num_classes is not None:
        set_num_classes(cfg, num_classes)
    return cfg


def test_r50_config_builds():
    cfg = _config("configs/retinanet/retinanet_R_50_FPN_1x.yaml")
    model = build_detection_model(cfg)
    assert model.rpn.head.num_anchors == 9 and model.rpn.head.num_classes == 80
    assert model.rpn.post_processor.nms_thresh == 0.5
    assert "RETINANET" in DENSE_HEADS.keys()


def test_synthetic_config_train_and_eval_step():
    cfg = _config("configs/retinanet/retinanet_R_18_FPN_synthetic.yaml", num_classes=3)
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
