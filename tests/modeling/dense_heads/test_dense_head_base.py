"""DenseHead (the one pipeline) with a tiny fake conv module, assigner and loss; the head contract
(DenseConvHead, per-branch output widths, extra branches); the shared head helpers (ScoreRule,
conv_tower, check_num_classes) and the registry's config nodes."""
import math

import pytest
import torch
from torch import nn

from maskrcnn_benchmark.layers import DFConv2d
from maskrcnn_benchmark.modeling.assigners import BaseAssigner
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS, config_node, num_classes_key
from maskrcnn_benchmark.modeling.dense_heads.base import (DenseConvHead, DenseHead, DenseOutputs,
                                                          DensePostProcessor, ScoreRule,
                                                          check_head_contract, check_num_classes,
                                                          conv_tower, permute_and_flatten)
from maskrcnn_benchmark.modeling.point_generator import PointGenerator, distances_to_boxes
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList

C = 2
STRIDES = (8, 16)
IMAGE_HW = (32, 48)


class FakeHead(nn.Module):
    """1x1 convs: cls [B, C, H, W], distances [B, 4, H, W] (>= 0), quality [B, 1, H, W]."""

    num_classes, num_anchors = C, 1
    class_dependent_tensors = ("cls.weight", "cls.bias")
    output_dims = {"cls_logits": C, "box_regression": 4, "quality": 1}

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.cls = nn.Conv2d(3, C, 1)
        self.box = nn.Conv2d(3, 4, 1)
        self.q = nn.Conv2d(3, 1, 1)

    def forward(self, features):
        return ([self.cls(x) for x in features], [self.box(x).exp() * 4 for x in features],
                [self.q(x) for x in features])


class FakeAssigner(BaseAssigner):
    """Records its inputs; every prior positive for GT 0."""

    needs_predictions = True

    def __init__(self):
        self.calls = []

    def _assign(self, levels, anchors, gt, predictions):
        self.calls.append((levels, predictions, torch.is_grad_enabled()))
        b, n = gt.boxes.shape[0], anchors.shape[0]
        return torch.zeros(b, n, dtype=torch.int64), torch.ones(b, n), None


class FakeLoss:
    def __init__(self):
        self.calls = []

    def __call__(self, outputs, priors, targets, assignment):
        self.calls.append((outputs, priors, targets, assignment))
        return {"loss": outputs.cls_logits.sum() + outputs.box_regression.sum() + outputs.quality.sum()}


def _module(threshold=0.3):
    return DenseHead(FakeHead(), PointGenerator(STRIDES), FakeAssigner(), FakeLoss(),
                     DensePostProcessor(pre_nms_top_n=10 ** 6, nms_thresh=1.0, detections_per_img=10 ** 6),
                     distances_to_boxes, ScoreRule(threshold, use_quality=True, transform=torch.sqrt))


def _inputs(batch=2):
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(batch, 3, IMAGE_HW[0] // s, IMAGE_HW[1] // s, generator=g) for s in STRIDES]
    return ImageList(torch.zeros(batch, 3, *IMAGE_HW), [IMAGE_HW, (30, 20)][:batch]), feats


def _target(boxes, labels):
    t = BoxList(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), (IMAGE_HW[1], IMAGE_HW[0]))
    t.add_field("labels", torch.tensor(labels, dtype=torch.int64))
    return t


def test_training_step_flattens_assigns_without_grad_and_calls_the_loss():
    m = _module()
    m.train()
    images, feats = _inputs()
    targets = [_target([[2, 2, 20, 20]], [2]), _target([[0, 0, 10, 30]], [1])]
    _, losses = m(images, feats, targets)
    assert set(losses) == {"loss"}
    (outputs, priors, got_targets, assignment), = m.loss_evaluator.calls
    raw = m.head(feats)
    # flatten: level-concatenated, location-major
    ref_cls = torch.cat([permute_and_flatten(x, 1, C) for x in raw[0]], dim=1)
    assert isinstance(outputs, DenseOutputs) and torch.equal(outputs.cls_logits, ref_cls)
    assert torch.equal(outputs.quality, torch.cat([x.flatten(2)[:, 0] for x in raw[2]], dim=1))
    # priors: one Tensor[N_l, 2] per level (not per image)
    assert [p.shape for p in priors] == [(24, 2), (6, 2)]
    # the loss got the targets padded to one GTBatch (1 GT each here)
    assert torch.equal(got_targets.boxes, torch.stack([t.bbox for t in targets]))
    assert got_targets.labels.tolist() == [[2], [1]] and got_targets.valid.all()
    # one batched assigner call: zero-size prior boxes, the batch's detached predictions
    (levels, pred, grad_on), = m.assigner.calls
    points = torch.cat(priors)
    pred_boxes = distances_to_boxes(outputs.box_regression.detach(), points[None])
    assert not grad_on
    assert torch.equal(torch.cat(levels), torch.cat([points, points], dim=1))
    assert torch.equal(pred.boxes, pred_boxes) and not pred.boxes.requires_grad
    torch.testing.assert_close(pred.scores, outputs.cls_logits.detach().sigmoid())
    assert not pred.scores.requires_grad
    assert assignment.labels.shape == (2, 30)
    assert assignment.labels[0].unique().tolist() == [2] and assignment.labels[1].unique().tolist() == [1]
    assert torch.equal(assignment.matched_gt[1], targets[1].bbox.expand(30, 4))
    losses["loss"].backward()
    assert m.head.cls.weight.grad is not None


def test_no_assigner_passes_none_and_no_predictions_without_need():
    m = _module()
    m.assigner = None
    m.train()
    images, feats = _inputs()
    m(images, feats, [_target([[2, 2, 20, 20]], [2]), _target([], [])])
    assert m.loss_evaluator.calls[0][3] is None
    plain = FakeAssigner()
    plain.needs_predictions = False
    m.assigner = plain
    m(images, feats, [_target([[2, 2, 20, 20]], [2]), _target([], [])])
    assert plain.calls[0][1] is None


def test_predict_scores_boxes_mask_are_the_rule_and_the_decoder():
    m = _module()
    images, feats = _inputs()
    pred = m.predict(feats)
    raw = m.head(feats)
    cls = torch.cat([permute_and_flatten(x, 1, C) for x in raw[0]], dim=1)
    q = torch.cat([permute_and_flatten(x, 1, 1) for x in raw[2]], dim=1)
    dist = torch.cat([permute_and_flatten(x, 1, 4) for x in raw[1]], dim=1)
    points = torch.cat(m.priors(feats))
    assert pred.level_sizes == (24, 6)
    torch.testing.assert_close(pred.scores, torch.sqrt(cls.sigmoid() * q.sigmoid()))
    assert torch.equal(pred.candidate_mask, cls.sigmoid() > 0.3)
    torch.testing.assert_close(pred.boxes, distances_to_boxes(dist, points[None]))
    assert pred.scores.shape == (2, 30, C) and pred.boxes.shape == (2, 30, 4)


class _Predict(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, a, b):
        p = self.head.predict([a, b])
        return p.scores, p.boxes, p.candidate_mask


def test_predict_exports_with_fixed_shapes():
    """``predict`` has no data-dependent shape: ``torch.export`` captures it as one graph."""
    m = _module().eval()
    _, feats = _inputs()
    with torch.no_grad():
        exported = torch.export.export(_Predict(m), tuple(feats)).module()
        other = [x + 0.5 for x in feats]
        for a, b in zip(exported(*other), _Predict(m)(*other)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_eval_reports_every_nonempty_candidate_without_nms():
    """With NMS at IoU 1.0 and no top-k limit, the detections are exactly the masked candidates
    whose clipped box is not empty (scores and labels included)."""
    m = _module(threshold=0.45)
    m.eval()
    images, feats = _inputs()
    dets, losses = m(images, feats)
    assert losses == {}
    with torch.no_grad():
        pred = m.predict(feats)
    for i, ((h, w), det) in enumerate(zip(images.image_sizes, dets)):
        assert det.size == (w, h)
        ref = set()
        for n in range(pred.scores.shape[1]):
            b = pred.boxes[i, n].tolist()
            b = [min(max(b[0], 0), w), min(max(b[1], 0), h), min(max(b[2], 0), w), min(max(b[3], 0), h)]
            if not (b[2] > b[0] and b[3] > b[1]):
                continue
            for c in range(C):
                if pred.candidate_mask[i, n, c]:
                    ref.add((tuple(round(v, 4) for v in b), round(float(pred.scores[i, n, c]), 6), c + 1))
        got = {(tuple(round(v, 4) for v in bb), round(s, 6), lab) for bb, s, lab in
               zip(det.bbox.tolist(), det.get_field("scores").tolist(), det.get_field("labels").tolist())}
        assert got == ref and len(ref) > 0
        s = det.get_field("scores")
        assert (s[:-1] >= s[1:]).all()


def test_training_requires_matching_targets():
    m = _module()
    m.train()
    images, feats = _inputs()
    with pytest.raises(ValueError, match="targets are required"):
        m(images, feats)
    with pytest.raises(ValueError, match="1 targets for 2 images"):
        m(images, feats, [_target([], [])])


def test_score_rule():
    logits = torch.tensor([[[0.0, 2.0]]])
    q = torch.tensor([[-1.0]])
    s, mask = ScoreRule(0.6, use_quality=True, transform=torch.sqrt)(logits, q)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    torch.testing.assert_close(s, torch.tensor([[[math.sqrt(0.5 * sig(-1)), math.sqrt(sig(2) * sig(-1))]]]))
    assert mask.tolist() == [[[False, True]]]
    s, mask = ScoreRule(0.4)(logits)
    torch.testing.assert_close(s, torch.tensor([[[0.5, sig(2)]]]))
    assert mask.tolist() == [[[True, True]]]


def test_conv_tower_layout():
    t = conv_tower(8, 2, num_groups=4)
    assert [type(x) for x in t] == [nn.Conv2d, nn.GroupNorm, nn.ReLU] * 2
    assert all(x.bias is not None and x.padding == (1, 1) for x in t if isinstance(x, nn.Conv2d))
    plain = conv_tower(8, 3)
    assert [type(x) for x in plain] == [nn.Conv2d, nn.ReLU] * 3
    dcn = conv_tower(8, 2, num_groups=4, use_dcn_last=True)
    assert isinstance(dcn[3], DFConv2d) and type(dcn[0]) is nn.Conv2d
    assert dcn(torch.randn(1, 8, 5, 6)).shape == (1, 8, 5, 6)


def test_check_num_classes():
    assert check_num_classes("MODEL.X.NUM_CLASSES", 81) == 80
    with pytest.raises(ValueError, match="MODEL.X.NUM_CLASSES must be >= 2.*got 0"):
        check_num_classes("MODEL.X.NUM_CLASSES", 0)


def test_heads_declare_their_config_node():
    from maskrcnn_benchmark.config import cfg as default_cfg

    known = {"ATSS": "ATSS", "DYNAMIC_ATSS": "ATSS", "RETINANET": "RETINANET",
             "FREEANCHOR": "RETINANET", "FCOS": "FCOS", "AUTOASSIGN": "AUTOASSIGN"}
    assert {k: DENSE_HEADS.config_nodes[k] for k in known} == known
    assert DENSE_HEADS.nodes_read["FREEANCHOR"] == ("RETINANET", "FREEANCHOR")
    for name in DENSE_HEADS:  # every registered head: its nodes exist, the first holds NUM_CLASSES
        nodes = DENSE_HEADS.nodes_read[name]
        assert nodes[0] == DENSE_HEADS.config_nodes[name]
        assert all(n in default_cfg.MODEL for n in nodes), (name, nodes)
        assert "NUM_CLASSES" in default_cfg.MODEL[nodes[0]], name
    cfg = default_cfg.clone()
    cfg.MODEL.HEAD = "DYNAMIC_ATSS"
    assert config_node(cfg) == "ATSS" and num_classes_key(cfg) == "MODEL.ATSS.NUM_CLASSES"
    cfg.MODEL.HEAD = "NOPE"
    with pytest.raises(KeyError, match="unknown entry 'NOPE'"):
        config_node(cfg)
    with pytest.raises(KeyError, match="already registered"):
        DENSE_HEADS.register("ATSS")(lambda cfg, c: None)


# ---- the head contract ---------------------------------------------------------------------------
class WideHead(FakeHead):
    """FakeHead with a 12-wide box branch (3 values per side) and an extra 2-wide branch."""

    output_dims = {"cls_logits": C, "box_regression": 12, "quality": 1, "extra": 2}

    def __init__(self):
        super().__init__()
        self.box = nn.Conv2d(3, 12, 1)
        self.extra = nn.Conv2d(3, 2, 1)

    def forward(self, features):
        cls, _, q = super().forward(features)
        return cls, [self.box(x) for x in features], q, [self.extra(x) for x in features]


def _mean_of_three(reg, priors):
    """12 values per prior -> the mean of each side's 3 as distances (a decoder reading K = 12)."""
    return distances_to_boxes(reg.unflatten(-1, (4, 3)).mean(-1).exp(), priors)


def test_output_widths_and_an_extra_branch_go_through_flatten_and_predict():
    m = DenseHead(WideHead(), PointGenerator(STRIDES), FakeAssigner(), FakeLoss(),
                  DensePostProcessor(pre_nms_top_n=10 ** 6, nms_thresh=1.0, detections_per_img=10 ** 6),
                  _mean_of_three, ScoreRule(0.3))
    _, feats = _inputs()
    raw = m.head(feats)
    out = m.flatten(raw)
    # the per-prior widths come from output_dims: [B, H*W*A, K] location-major, as permute_and_flatten
    assert out.box_regression.shape == (2, 30, 12)
    assert torch.equal(out.box_regression, torch.cat([permute_and_flatten(x, 1, 12) for x in raw[1]], 1))
    assert list(out.extras) == ["extra"]
    assert torch.equal(out.extras["extra"], torch.cat([permute_and_flatten(x, 1, 2) for x in raw[3]], 1))
    assert out.quality.shape == (2, 30)
    pred = m.predict(feats)
    priors = torch.cat(m.priors(feats))
    torch.testing.assert_close(pred.boxes, _mean_of_three(out.box_regression, priors[None]))
    # the assigner's predictions use the same decoder
    torch.testing.assert_close(m.assigner_predictions(out, m.priors(feats)).boxes, pred.boxes)


def test_dense_outputs_from_branches():
    b = {"cls_logits": torch.zeros(1, 3, 2), "box_regression": torch.ones(1, 3, 8),
         "quality": torch.ones(1, 3, 1), "dfl": torch.full((1, 3, 5), 2.0)}
    out = DenseOutputs.from_branches(b)
    assert out.quality.shape == (1, 3) and out.box_regression.shape == (1, 3, 8)
    assert set(out.extras) == {"dfl"} and DenseOutputs(b["cls_logits"], b["box_regression"]).extras == {}


def test_the_head_contract_is_checked_when_a_dense_head_is_built():
    assert isinstance(FakeHead(), DenseConvHead)
    check_head_contract(FakeHead())

    del_attr = type("NoCD", (nn.Module,), {"num_classes": C, "num_anchors": 1,
                                            "output_dims": FakeHead.output_dims})
    with pytest.raises(TypeError, match=r"NoCD lacks \['class_dependent_tensors'\]"):
        DenseHead(del_attr(), PointGenerator(STRIDES), None, FakeLoss(), None, distances_to_boxes,
                  ScoreRule())

    class WrongName(FakeHead):
        class_dependent_tensors = ("cls_logits.weight",)
    with pytest.raises(TypeError, match="must name tensors of the module.*cls_logits.weight"):
        check_head_contract(WrongName())

    class WrongDims(FakeHead):
        output_dims = {"box_regression": 4, "cls_logits": C}
    with pytest.raises(TypeError, match="must start with"):
        check_head_contract(WrongDims())

    class WrongCount(FakeHead):
        output_dims = {"cls_logits": C, "box_regression": 4}
    m = DenseHead(WrongCount(), PointGenerator(STRIDES), None, FakeLoss(), None, distances_to_boxes,
                  ScoreRule())
    with pytest.raises(ValueError, match="returned 3 branches, its output_dims declare 2"):
        m.flatten(m.head(_inputs()[1]))


@pytest.mark.parametrize("name", sorted(DENSE_HEADS))
def test_every_registered_head_keeps_the_contract(name):
    from maskrcnn_benchmark.config import cfg as default_cfg
    from maskrcnn_benchmark.modeling.dense_heads import set_num_classes

    cfg = default_cfg.clone()
    cfg.MODEL.HEAD = name
    set_num_classes(cfg, 3)
    module = DENSE_HEADS[name](cfg, 32)
    check_head_contract(module.head)
    assert "cls_logits.weight" in module.head.class_dependent_tensors  # the checkpoints' name
    assert list(module.head.output_dims)[:2] == ["cls_logits", "box_regression"]
