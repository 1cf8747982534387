#!/usr/bin/env python
"""Run an original release (ATSS or Dynamic ATSS) and this project on the same random weights and compare.

Not part of CI: it needs the release's source, e.g. extracted from a clone with

    git -C ATSS archive HEAD atss_core configs | tar -x -C /tmp/atss
    python tools/compare_release.py --release-dir /tmp/atss --config configs/atss/atss_R_50_FPN_1x.yaml
    git -C DLA-Combined-IoUs archive HEAD dynamic_atss_core configs | tar -x -C /tmp/dyn
    python tools/compare_release.py --release-dir /tmp/dyn --config configs/dynamic_atss/dynamic_atss_R_50_FPN_1x.yaml

The release runs on the CPU unchanged except for plain-PyTorch stand-ins for its compiled ``_C`` ops
(``nms`` and the CUDA ``ml_nms``, with their "+1" areas and comparisons; the focal loss through its own
``sigmoid_focal_loss_cpu`` formula, called with the list arguments it indexes), a ``torch._six`` stub,
``np.float`` (removed from numpy) and a contiguous ``permute_and_flatten`` result (newer torch keeps
permuted strides where their ``.view`` expected contiguous tensors). Its model is built from the release yaml with random weights (classification bias N(0, 1) and box
weights N(0, 0.05) so that it detects), saved as a release-style checkpoint (with its
``rpn.anchor_generator.cell_anchors`` buffers) and loaded here through ``build_test_model`` from the same
yaml, unchanged (MODEL.LEGACY_PLUS_ONE auto). Printed: tensors loaded bit-equal, the geometry chosen,
per image the detections matched by (label, score) with the largest box (COCO xywh on the original
image) and score differences, and the training losses on random GTs with their relative differences.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import tempfile
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


# ---- stand-ins for the release's compiled ops ------------------------------------------------------
def _plus_one_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, M] IoU of inclusive boxes ("+1" widths), as the release's nms kernels."""
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    wh = (torch.min(a[:, None, 2:], b[None, :, 2:]) - torch.max(a[:, None, :2], b[None, :, :2]) + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None] - inter)


def _greedy(boxes, scores, labels, threshold, strict):
    order = scores.sort(descending=True).indices
    iou = _plus_one_iou(boxes[order], boxes[order])
    same = labels[order][:, None] == labels[order][None, :]
    over = (iou > threshold) if strict else (iou >= threshold)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if not suppressed[i]:
            suppressed[i + 1:] |= over[i, i + 1:] & same[i, i + 1:]
    return order[~suppressed]


def _nms(dets, scores, threshold):
    """nms_cpu: suppress at IoU >= threshold; keep order: decreasing score."""
    return _greedy(dets, scores, torch.zeros(len(scores)), threshold, strict=False)


def _ml_nms(dets, scores, labels, threshold):
    """ml_nms_cuda: same label only, suppress at IoU > threshold; kept indices in increasing order."""
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    return _greedy(dets, scores, labels, threshold, strict=True).sort().values


def import_release(release_dir: str):
    """The release's package (``atss_core`` or ``dynamic_atss_core``) with the stand-ins installed."""
    name = next(n for n in ("dynamic_atss_core", "atss_core") if os.path.isdir(os.path.join(release_dir, n)))
    sys.path.insert(0, release_dir)
    sys.modules.setdefault("torch._six", types.SimpleNamespace(PY3=True, string_classes=str))
    import numpy as np

    if "float" not in np.__dict__:  # np.float (float64), removed from numpy 1.24
        np.float = float
    ops = types.ModuleType(f"{name}._C")
    ops.nms, ops.ml_nms = _nms, _ml_nms
    sys.modules[f"{name}._C"] = ops
    pkg = importlib.import_module(name)
    pkg._C = ops
    focal = importlib.import_module(f"{name}.layers.sigmoid_focal_loss")
    cpu_formula = focal.sigmoid_focal_loss_cpu  # indexes gamma[0] / alpha[0]: give it lists

    def sigmoid_focal_loss(logits, targets, gamma, alpha):
        return cpu_formula(logits, targets, [gamma], [alpha])

    focal.sigmoid_focal_loss_cpu = sigmoid_focal_loss
    # torch >= 1.x keeps a permuted layout through reshape / sigmoid / ">", where their ".view(N, -1)"
    # relied on contiguous results: the same values, made contiguous (before the heads import it)
    rpn_utils = importlib.import_module(f"{name}.modeling.rpn.utils")
    flatten = rpn_utils.permute_and_flatten
    rpn_utils.permute_and_flatten = lambda *a, **k: flatten(*a, **k).contiguous()
    return name, pkg


# ---- the comparison -----------------------------------------------------------------------------------
def build_release_model(name: str, config: str, seed: int):
    cfg = importlib.import_module(f"{name}.config").cfg.clone()
    cfg.merge_from_file(config)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHT", ""])
    torch.manual_seed(seed)
    model = importlib.import_module(f"{name}.modeling.detector").build_detection_model(cfg)
    head = model.rpn.head
    with torch.no_grad():
        head.cls_logits.bias.normal_()
        head.bbox_pred.weight.normal_(std=0.05)
    return cfg, model


def random_targets(num, image_wh, seed):
    """Inclusive GT boxes (float32) and labels 1..80 for one image."""
    g = torch.Generator().manual_seed(seed)
    w, h = image_wh
    wh = torch.rand(num, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5]) + 8
    xy = torch.rand(num, 2, generator=g) * (torch.tensor([float(w), float(h)]) - wh)
    return torch.cat((xy, xy + wh - 1), dim=1), torch.randint(1, 81, (num,), generator=g)


def compare(args) -> int:
    from maskrcnn_benchmark.engine.inference import build_test_model
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.structures.bounding_box import BoxList
    from maskrcnn_benchmark.structures.image_list import ImageList
    from maskrcnn_benchmark.utils.checkpoint import load_weight_file, load_model_weights
    from maskrcnn_benchmark.utils.legacy_plus_one import legacy_plus_one_from_config
    from maskrcnn_benchmark.utils.logger import setup_logger
    from maskrcnn_benchmark.config import setup_cfg

    setup_logger("maskrcnn_benchmark", "", 0)
    name, _ = import_release(args.release_dir)
    config = os.path.join(args.release_dir, args.config)
    rcfg, theirs = build_release_model(name, config, args.seed)
    image_list = importlib.import_module(f"{name}.structures.image_list")
    release_boxlist = importlib.import_module(f"{name}.structures.bounding_box").BoxList
    with tempfile.TemporaryDirectory() as tmp:
        weight = os.path.join(tmp, "release.pth")
        torch.save({"model": theirs.state_dict()}, weight)
        cfg = setup_cfg(config, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHT", weight, "OUTPUT_DIR", "",
                                 "TEST.FOLD_FROZEN_BN", str(args.fold), "TEST.MEMORY_FORMAT", "contiguous",
                                 "MODEL.LEGACY_PLUS_ONE", args.legacy_plus_one])
        cfg, ours = build_test_model(cfg)
        state = load_weight_file(weight)
        train_model = build_detection_model(cfg)
        load_model_weights(train_model, state)
    sd_ours = train_model.state_dict()
    same = sum(1 for k, v in theirs.state_dict().items()
               if k.replace("anchor_generator", "prior_generator") in sd_ours
               and torch.equal(sd_ours[k.replace("anchor_generator", "prior_generator")], v))
    print(f"release tensors loaded bit-equal: {same} of {len(theirs.state_dict())}")
    print(f"MODEL.LEGACY_PLUS_ONE in force: {legacy_plus_one_from_config(cfg)}")

    g = torch.Generator().manual_seed(args.seed + 1)
    h, w = args.size
    images = torch.randn(2, 3, h, w, generator=g) * 50
    sizes = [(h, w), (h - 40, w - 24)]
    for i, (ih, iw) in enumerate(sizes):
        images[i, :, ih:, :] = 0
        images[i, :, :, iw:] = 0
    originals = [(int(w * 1.6), int(h * 1.6)), (int((w - 24) * 1.25), int((h - 40) * 1.25))]
    theirs.eval()
    with torch.no_grad():
        r_out = theirs(image_list.ImageList(images, sizes))
        o_out = ours(ImageList(images.clone(), sizes))
    worst_box = worst_score = 0.0
    status = 0
    for i, (r, o) in enumerate(zip(r_out, o_out)):
        r = r.resize(originals[i]).convert("xywh")
        o_xywh = o.resize(originals[i], legacy_plus_one=legacy_plus_one_from_config(cfg)).xywh()
        kr = sorted(range(len(r)), key=lambda k: (int(r.get_field("labels")[k]), -float(r.get_field("scores")[k])))
        ko = sorted(range(len(o)), key=lambda k: (int(o.get_field("labels")[k]), -float(o.get_field("scores")[k])))
        labels_equal = [int(r.get_field("labels")[k]) for k in kr] == [int(o.get_field("labels")[k]) for k in ko]
        if len(kr) != len(ko) or not labels_equal:
            print(f"image {i}: {len(r)} release detections, {len(o)} ours, labels equal: {labels_equal}")
            status = 1
            continue
        db = (r.bbox[kr].double() - o_xywh[ko].double()).abs().max().item() if kr else 0.0
        ds = (r.get_field("scores")[kr].double() - o.get_field("scores")[ko].double()).abs().max().item() if kr else 0.0
        worst_box, worst_score = max(worst_box, db), max(worst_score, ds)
        print(f"image {i}: {len(r)} detections each; max |box diff| {db:.2e} px, max |score diff| {ds:.2e}")
    ok = status == 0 and worst_box <= 1e-3 and worst_score <= 1e-5
    print(f"detections within 1e-3 px / 1e-5: {ok}")

    r_targets, o_targets = [], []
    for i, (ih, iw) in enumerate(sizes):
        boxes, labels = random_targets(args.num_gt, (iw, ih), args.seed + 10 + i)
        t = release_boxlist(boxes, (iw, ih), mode="xyxy")
        t.add_field("labels", labels)
        r_targets.append(t)
        t = BoxList(boxes + torch.tensor([0.0, 0.0, 1.0, 1.0]), (iw, ih))
        t.add_field("labels", labels)
        o_targets.append(t)
    theirs.train()
    train_model.train()
    r_losses = theirs(image_list.ImageList(images, sizes), r_targets)
    o_losses = train_model(ImageList(images.clone(), sizes), o_targets)
    for k, v in sorted(o_losses.items()):
        rv = r_losses["loss_IoU" if k == "loss_iou" else k]  # the Dynamic ATSS release's name
        rel = abs(v.item() - rv.item()) / max(abs(rv.item()), 1e-12)
        print(f"{k}: release {rv.item():.8f}  ours {v.item():.8f}  relative difference {rel:.2e}")
        ok = ok and rel <= 1e-6
    print("all within tolerance" if ok else "DIFFERENCES above tolerance")
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--release-dir", required=True, help="folder holding atss_core/ or dynamic_atss_core/ "
                        "and configs/ of a release")
    parser.add_argument("--config", required=True, help="release yaml, relative to --release-dir")
    parser.add_argument("--size", type=int, nargs=2, default=(320, 416), metavar=("H", "W"))
    parser.add_argument("--num-gt", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fold", action="store_true", help="TEST.FOLD_FROZEN_BN True for our inference model")
    parser.add_argument("--legacy-plus-one", default="auto", choices=("auto", "True", "False"),
                        help="MODEL.LEGACY_PLUS_ONE for our side (False: see the continuous convention's offsets)")
    args = parser.parse_args(argv)
    if any(s % 32 for s in args.size) or min(args.size) < 128:
        parser.error("--size: H and W must be multiples of 32, at least 128")
    return compare(args)


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    sys.exit(run_tool(main))
