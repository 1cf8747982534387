"""GFL (dense_heads/gfl.py): integral decoding, DFL, the losses and the mmdetection name map against
plain re-derivations; the configs; Dynamic ATSS assignment on the integral-decoded boxes."""
import math
import os
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.modeling.assigners import (ATSSAssigner, BatchAssignment, DynamicATSSAssigner,
                                                   assign_batch, pad_targets)
from maskrcnn_benchmark.modeling.dense_heads.base import DenseOutputs
from maskrcnn_benchmark.modeling.dense_heads.gfl import (DistributionCoder, GFLLoss, distribution_focal_loss,
                                                         integral)
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import to_image_list
from maskrcnn_benchmark.utils.mmdet_model_loading import convert_mmdet_weights, is_mmdet_state_dict
from maskrcnn_benchmark.utils.model_serialization import load_state_dict_flexible

ROOT = Path(__file__).resolve().parents[3]
SYNTHETIC = ROOT / "configs/gfl/gfl_R_18_FPN_synthetic.yaml"


def _cfg(path=SYNTHETIC, *opts):
    cfg = default_cfg.clone()
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def test_integral_is_the_expected_bin():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4 * 5, generator=g)
    got = integral(logits, 4)
    for i in range(3):
        for side in range(4):
            z = [math.exp(v) for v in logits[i, side * 5:(side + 1) * 5].tolist()]
            want = sum(k * zk for k, zk in enumerate(z)) / sum(z)
            assert abs(float(got[i, side]) - want) < 1e-5
    peaked = torch.full((1, 20), -1e4)
    peaked[0, [2, 5 + 0, 10 + 4, 15 + 1]] = 0.0
    assert integral(peaked, 4).tolist() == [[2.0, 0.0, 4.0, 1.0]]


def test_dfl_by_hand():
    logits = torch.tensor([[0.1, -0.3, 0.8, 0.2, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([2.3, 0.0])
    got = distribution_focal_loss(logits, target)
    log_z = math.log(sum(math.exp(v) for v in logits[0].tolist()))
    want0 = -(0.7 * (0.8 - log_z) + 0.3 * (0.2 - log_z))
    assert abs(float(got[0]) - want0) < 1e-6
    assert abs(float(got[1]) - math.log(5)) < 1e-6  # uniform, all weight on bin 0
    # minimal (the entropy of (0.7, 0.3)) for the distribution that puts exactly that mass there
    best = torch.log(torch.tensor([[1e-9, 1e-9, 0.7, 0.3, 1e-9]]))
    entropy = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    assert abs(float(distribution_focal_loss(best, target[:1])) - entropy) < 1e-5


def test_distribution_coder_decodes_from_the_anchor_centre_in_strides():
    coder = DistributionCoder(reg_max=4, scale=8.0)
    anchors = torch.tensor([[0.0, 0.0, 64.0, 64.0], [100.0, 50.0, 228.0, 178.0]])  # strides 8, 16
    peaked = torch.full((2, 20), -1e4)
    peaked[:, [1, 5 + 2, 10 + 3, 15 + 0]] = 0.0      # l, t, r, b = 1, 2, 3, 0 bins
    boxes = coder.decode(peaked, anchors)
    torch.testing.assert_close(boxes, torch.tensor([[32 - 8.0, 32 - 16.0, 32 + 24.0, 32.0],
                                                    [164 - 16.0, 114 - 32.0, 164 + 48.0, 114.0]]))
    gt = torch.tensor([[30.0, 0.0, 100.0, 40.0], [150.0, 90.0, 170.0, 120.0]])
    torch.testing.assert_close(coder.encode(gt, anchors),
                               torch.tensor([[0.25, 4 - 0.01, 4 - 0.01, 1.0],
                                             [14 / 16, 24 / 16, 6 / 16, 6 / 16]]))


def _hand_losses(logits, reg, anchors, labels, matched, reg_max, scale):
    """Plain per-prior re-derivation of the GFL losses (loops, math)."""
    n, c = logits.shape
    pos = [i for i in range(n) if labels[i] > 0]
    qfl, w_sum, giou_sum, dfl_sum = 0.0, 0.0, 0.0, 0.0
    for i in range(n):
        cx, cy = [(anchors[i, k] + anchors[i, k + 2]).item() / 2 for k in (0, 1)]
        unit = (anchors[i, 2] - anchors[i, 0]).item() / scale
        d = []
        for s in range(4):
            z = [math.exp(v) for v in reg[i, s * (reg_max + 1):(s + 1) * (reg_max + 1)].tolist()]
            d.append(sum(k * zk for k, zk in enumerate(z)) / sum(z) * unit)
        box = (cx - d[0], cy - d[1], cx + d[2], cy + d[3])
        q = 0.0
        if i in pos:
            g = matched[i].tolist()
            iw = max(0.0, min(box[2], g[2]) - max(box[0], g[0]))
            ih = max(0.0, min(box[3], g[3]) - max(box[1], g[1]))
            inter = iw * ih
            union = (box[2] - box[0]) * (box[3] - box[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
            q = inter / union
            ew = max(box[2], g[2]) - min(box[0], g[0])
            eh = max(box[3], g[3]) - min(box[1], g[1])
            giou = q - (ew * eh - union) / (ew * eh)
            w = max(1 / (1 + math.exp(-v)) for v in logits[i].tolist())
            w_sum += w
            giou_sum += w * (1 - giou)
            t = [min(max(v / unit, 0.0), reg_max - 0.01)
                 for v in (cx - g[0], cy - g[1], g[2] - cx, g[3] - cy)]
            dfl = 0.0
            for s in range(4):
                row = reg[i, s * (reg_max + 1):(s + 1) * (reg_max + 1)].tolist()
                log_z = math.log(sum(math.exp(v) for v in row))
                left = int(math.floor(t[s]))
                dfl += -((left + 1 - t[s]) * (row[left] - log_z) + (t[s] - left) * (row[left + 1] - log_z))
            dfl_sum += w * dfl / 4
        for k in range(c if labels[i] >= 0 else 0):  # label -1: ignored
            x = logits[i, k].item()
            p = 1 / (1 + math.exp(-x))
            y = q if labels[i] == k + 1 else 0.0
            bce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
            qfl += abs(y - p) ** 2 * bce
    return {"loss_cls": qfl / max(1, len(pos)), "loss_bbox": 2.0 * giou_sum / w_sum,
            "loss_dfl": 0.25 * dfl_sum / w_sum}


def test_losses_match_a_plain_re_derivation():
    g = torch.Generator().manual_seed(3)
    reg_max, c, n = 4, 3, 6
    anchors = torch.tensor([[0, 0, 32, 32], [16, 0, 48, 32], [0, 16, 32, 48], [16, 16, 48, 48],
                            [0, 0, 64, 64], [32, 32, 96, 96]], dtype=torch.float32)  # size 4 x stride
    logits = torch.randn(1, n, c, generator=g)
    reg = torch.randn(1, n, 4 * (reg_max + 1), generator=g)
    labels = torch.tensor([[2, 0, 1, 0, 3, -1]])
    gt = torch.tensor([[4.0, 2.0, 30.0, 28.0], [0, 0, 0, 0], [3.0, 20.0, 25.0, 40.0], [0, 0, 0, 0],
                       [5.0, 8.0, 60.0, 50.0], [0, 0, 0, 0]])[None]
    pos = labels > 0
    assignment = BatchAssignment(labels=labels, matched_gt=gt, pos=pos, quality=torch.zeros(1, n),
                                 stats={})
    loss = GFLLoss(DistributionCoder(reg_max, 4.0))
    got = loss(DenseOutputs(logits, reg), [anchors[:4], anchors[4:]], None, assignment)
    want = _hand_losses(logits[0], reg[0], anchors, labels[0], gt[0], reg_max, 4.0)
    assert set(got) == set(want)
    for k in want:
        assert abs(float(got[k]) - want[k]) < 1e-4 * max(1.0, abs(want[k])), (k, float(got[k]), want[k])
    # no positive: finite, zero box losses that keep the graph
    none = BatchAssignment(labels=torch.zeros_like(labels), matched_gt=gt, pos=torch.zeros_like(pos),
                           quality=torch.zeros(1, n), stats={})
    reg.requires_grad_(True)
    empty = loss(DenseOutputs(logits, reg), [anchors], None, none)
    assert float(empty["loss_bbox"].detach()) == 0.0 and float(empty["loss_dfl"].detach()) == 0.0
    sum(empty.values()).backward()
    assert torch.isfinite(reg.grad).all()


def test_mmdet_names_load_into_the_gfl_head():
    model = build_detection_model(_cfg()).eval()
    ours = {k: v.clone() for k, v in model.state_dict().items()}
    mm = {"backbone.conv1.weight": torch.zeros(1), "neck.lateral_convs.0.conv.weight": torch.zeros(1)}
    head = {k[len("rpn.head."):]: v for k, v in ours.items() if k.startswith("rpn.head.")}
    per_conv = 3  # conv, GN, ReLU
    for k, v in head.items():
        parts = k.split(".")
        if parts[0] in ("cls_tower", "bbox_tower"):
            i, kind = divmod(int(parts[1]), per_conv)
            tower = "cls_convs" if parts[0] == "cls_tower" else "reg_convs"
            mm[f"bbox_head.{tower}.{i}.{'conv' if kind == 0 else 'gn'}.{parts[2]}"] = v + 1
        elif parts[0] == "scales":
            mm[f"bbox_head.scales.{parts[1]}.scale"] = (v + 1).reshape(())  # mmdet: 0-d
        else:
            name = {"cls_logits": "gfl_cls", "bbox_pred": "gfl_reg"}[parts[0]]
            mm[f"bbox_head.{name}.{parts[1]}"] = v + 1
    assert is_mmdet_state_dict(mm)
    converted = {k: v for k, v in convert_mmdet_weights(mm).items() if k.startswith("head.")}
    assert set(converted) == {f"head.{k}" for k in head}
    report = load_state_dict_flexible(model, converted)
    assert not [k for k in report.missing if k.startswith("rpn.head.")]
    for k, v in head.items():
        torch.testing.assert_close(model.state_dict()[f"rpn.head.{k}"], v + 1)


@pytest.mark.parametrize("name,assigner", [("gfl_R_50_FPN_1x.yaml", ATSSAssigner),
                                           ("gfl_dynamic_atss_R_50_FPN_1x.yaml", DynamicATSSAssigner)])
def test_r50_configs_have_mmdetection_settings(name, assigner):
    cfg = _cfg(ROOT / "configs/gfl" / name, "MODEL.DEVICE", "meta")
    g, a = cfg.MODEL.GFL, cfg.MODEL.ATSS
    assert (g.REG_MAX, g.NUM_CONVS, g.CONV_BIAS, g.QFL_BETA, g.DFL_WEIGHT, g.GIOU_WEIGHT) == (16, 4, False, 2.0, 0.25, 2.0)
    assert (a.TOPK, tuple(a.ASPECT_RATIOS), a.SCALES_PER_OCTAVE, a.ANCHOR_SIZES[0] / a.ANCHOR_STRIDES[0]) == (9, (1.0,), 1, 8)
    assert (g.INFERENCE_TH, g.PRE_NMS_TOP_N, g.NMS_TH, cfg.TEST.DETECTIONS_PER_IMG) == (0.05, 1000, 0.6, 100)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH, tuple(cfg.SOLVER.STEPS), cfg.SOLVER.MAX_ITER) == (
        0.01, 16, (60000, 80000), 90000)
    with torch.device("meta"):
        model = build_detection_model(cfg)
    assert type(model.rpn.assigner) is assigner
    assert model.rpn.head.bbox_pred.out_channels == 4 * 17


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 128, 160, generator=g), torch.randn(3, 96, 128, generator=g)]
    targets = []
    for img, b, lab in zip(images, [[[10.0, 12.0, 70.0, 80.0], [60.0, 20.0, 150.0, 60.0]], []], [[1, 3], []]):
        t = BoxList(torch.tensor(b).reshape(-1, 4), (img.shape[2], img.shape[1]))
        t.add_field("labels", torch.tensor(lab, dtype=torch.int64))
        targets.append(t)
    return to_image_list(images, 32), targets


def test_dynamic_atss_assignment_reads_the_integral_decoded_predictions():
    cfg = _cfg(SYNTHETIC, "MODEL.GFL.ASSIGNER", "DYNAMIC_ATSS")
    torch.manual_seed(0)
    model = build_detection_model(cfg).train()
    dense = model.rpn
    assert isinstance(dense.assigner, DynamicATSSAssigner) and dense.assigner.needs_predictions
    images, targets = _batch()
    feats = model.backbone(images.tensors)
    outputs = dense.flatten(dense.head(feats))
    priors = dense.priors(feats)
    pred = dense.assigner_predictions(outputs, priors)
    anchors = torch.cat(priors)
    want = DistributionCoder(16, 4.0).decode(outputs.box_regression.detach(), anchors[None])
    torch.testing.assert_close(pred.boxes, want)
    gt = pad_targets(targets)
    got = dense.assign(outputs, priors, gt)
    ref = assign_batch(dense.assigner, [dense.prior_generator.as_boxes(p) for p in priors], gt, pred)
    assert torch.equal(got.labels, ref.labels) and got.pos.any()
    # sync-free training step of the variant (the sweep covers the synthetic config's ATSS one)
    with FakeTensorMode(allow_non_fake_inputs=True):
        losses = model(images, targets)
        sum(losses.values()).backward()
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_dfl"}


def test_synthetic_training_step_is_finite_and_detects():
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_detection_model(cfg).train()
    images, targets = _batch()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["loss_bbox"].detach()) > 0
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        dets = model(images)
    assert len(dets) == 2 and all(d.bbox.shape[1] == 4 for d in dets)
    assert os.path.basename(str(SYNTHETIC)).endswith("_R_18_FPN_synthetic.yaml")
