#!/usr/bin/env python
"""Numeric check of the mmdetection weight path: build mmdetection's model (its own packaged config)
with random weights, save it as an mmdetection checkpoint, load that through MODEL.WEIGHT into this
project's model (``MODELS``: the ``configs/*/*_mmdet.yaml`` variants, or for GFL
``configs/gfl/gfl_R_50_FPN_1x.yaml``, written with mmdetection's conventions), run both on the same
normalised input and print the largest differences of the FPN features, each head branch (widths
per prior from the head's ``output_dims``: GFL's box branch is 4 x (reg_max + 1) distribution
logits), the priors, the decoded boxes (GFL: mmdetection's ``Integral`` + ``distance2bbox``) and the
scores.

Needs mmdetection (not a dependency of this project; never run in CI), e.g. in a scratch venv:
``pip install mmdet==3.3.0 mmengine==0.10.7 mmcv==2.1.0`` (with ``mmcv-lite`` instead of a compiled
mmcv, pass ``--mmcv-lite``: mmdetection 3.3 rejects mmcv-lite's version string and its compiled ops
are missing; the flag patches the version and stubs ``mmcv._ext``, which this check never calls).

    python tools/compare_mmdet.py --model all [--height 256 --width 320] [--mmcv-lite]
"""
import argparse
import os
import sys
import tempfile
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = {  # name: (mmdetection config under mmdet/.mim/configs, this project's config, score rule)
    "free_anchor": ("free_anchor/freeanchor_r50_fpn_1x_coco.py", "configs/free_anchor/free_anchor_R_50_FPN_1x_mmdet.yaml",
                    "cls"),
    "atss": ("atss/atss_r50_fpn_1x_coco.py", "configs/atss/atss_R_50_FPN_1x_mmdet.yaml", "cls*quality (ours: sqrt)"),
    "autoassign": ("autoassign/autoassign_r50-caffe_fpn_1x_coco.py",
                   "configs/autoassign/autoassign_R_50_FPN_1x_mmdet.yaml", "cls*quality"),
    # gfl_R_50_FPN_1x.yaml already has mmdetection's conventions (no *_mmdet.yaml variant needed)
    "gfl": ("gfl/gfl_r50_fpn_1x_coco.py", "configs/gfl/gfl_R_50_FPN_1x.yaml", "cls: joint class-IoU"),
}


def _mmcv_lite_shim():
    import mmcv

    mmcv.__version__ = "2.1.0"
    ext = types.ModuleType("mmcv._ext")

    def missing(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def f(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name}: mmcv-lite has no compiled ops")
        return f

    ext.__getattr__ = missing
    sys.modules["mmcv._ext"] = ext


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Random but well-scaled weights: kaiming-normal convs, BN statistics near identity, GN / BN
    affine near 1 / 0, Scale near 1, AutoAssign's centre prior sigma positive; GFL's Integral bins kept."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point() or name.endswith("integral.project"):  # GFL's bins: a constant
                continue
            if t.ndim == 4:
                fan_in = t.shape[1] * t.shape[2] * t.shape[3]
                std = (2.0 / fan_in) ** 0.5
                if name.startswith("neck."):  # the ResNet's outputs reach ~1e4: keep P3-P7 near 1-10
                    std *= 1e-3
                t.copy_(torch.randn(t.shape, generator=g) * std)
            elif name.endswith("running_var") or name.endswith("sigma") or name.endswith(".scale"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith("running_mean") or name.endswith("bias") or name.endswith("mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            else:  # norm weights
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)


def _flat(maps, channels):
    """Per level [B, A*K, H, W] -> [B, sum H*W*A, K] (location-major, anchor-minor)."""
    out = []
    for m in maps:
        b = m.shape[0]
        out.append(m.permute(0, 2, 3, 1).reshape(b, -1, channels))
    return torch.cat(out, dim=1)


def _mm_boxes(bbox_head, priors, reg_maps):
    """mmdetection's own decoding of one image's box branch (per level Tensor[A*K, H, W]) from its
    priors -> Tensor[N, 4], not clipped to the image (this project's predict does not clip either):
    GFLHead ``distance2bbox(anchor_center, Integral(logits) * stride)`` (its ``predict_by_feat``),
    the others ``bbox_coder.decode(prior, deltas)``."""
    boxes = []
    for lvl, (p, r) in enumerate(zip(priors, reg_maps)):
        r = r.permute(1, 2, 0)
        if hasattr(bbox_head, "integral"):  # GFLHead: distribution logits [H, W, 4 * (reg_max + 1)]
            stride = bbox_head.prior_generator.strides[lvl][0]
            boxes.append(bbox_head.bbox_coder.decode(bbox_head.anchor_center(p), bbox_head.integral(r) * stride))
        else:
            boxes.append(bbox_head.bbox_coder.decode(p, r.reshape(-1, 4)))
    return torch.cat(boxes)


def _report(what, ours, theirs):
    diff = (ours.double() - theirs.double()).abs().max().item()
    scale = theirs.double().abs().max().item()
    print(f"  {what:<40} max |diff| {diff:.3e}   (max |value| {scale:.3e}, relative {diff / max(scale, 1e-30):.1e})")
    return diff / max(scale, 1e-30)


def compare(name: str, height: int, width: int, seed: int) -> float:
    import mmdet
    from mmdet.registry import MODELS as MM_MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer
    from maskrcnn_benchmark.config import setup_cfg

    register_all_modules()
    mm_cfg_path, our_cfg, score_rule = MODELS[name]
    mm_cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", mm_cfg_path))
    mm = MM_MODELS.build(mm_cfg.model).eval()
    _randomise(mm, seed)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        weight = os.path.join(tmp, f"{name}_mmdet_random.pth")
        torch.save({"meta": {"mmdet_version": mmdet.__version__}, "state_dict": mm.state_dict()}, weight)
        cfg = setup_cfg(os.path.join(root, our_cfg), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHT", weight])
        ours = build_detection_model(cfg).eval()
        Checkpointer(ours, save_to_disk=False).load_weights(weight, min_match=1.0)
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed + 1))
    print(f"{name}: mmdetection {mm_cfg_path} vs {our_cfg}, input {tuple(x.shape)}")
    worst = 0.0
    with torch.no_grad():
        mm_feats = mm.extract_feat(x)
        our_feats = ours.backbone(x)
        for lvl, (a, b) in enumerate(zip(our_feats, mm_feats)):
            worst = max(worst, _report(f"FPN P{lvl + 3}", a, b))
        mm_out = mm.bbox_head(mm_feats)
        head = ours.rpn
        raw = head.head(list(our_feats))
        # per-prior width of each branch from the head (cls C, box 4 or 4 x (reg_max + 1), quality 1),
        # in the order both heads return them
        dims = list(head.head.output_dims.items())
        if len(raw) != len(mm_out) or len(dims) != len(mm_out):
            raise SystemExit(f"{name}: this head returns {len(raw)} branches ({dict(dims)}), mmdetection's "
                             f"{len(mm_out)}")
        for (branch, k), ours_b, mm_b in zip(dims, raw, mm_out):
            worst = max(worst, _report(f"{branch} ({k} per prior)", _flat(ours_b, k), _flat(mm_b, k)))
        c = head.head.num_classes
        sizes = [f.shape[-2:] for f in mm_feats]
        mm_priors = mm.bbox_head.prior_generator.grid_priors(sizes, device=x.device)
        our_priors = head.priors(list(our_feats))
        our_p = torch.cat([p[:, :2] if p.shape[1] == 2 else p for p in our_priors])
        mm_p = torch.cat([p[:, :our_p.shape[1]] for p in mm_priors])
        worst = max(worst, _report("priors", our_p, mm_p))
        pred = head.predict(list(our_feats))
        mm_boxes = _mm_boxes(mm.bbox_head, mm_priors, [m[0] for m in mm_out[1]])
        decoding = " (Integral + distance2bbox)" if hasattr(mm.bbox_head, "integral") else ""
        worst = max(worst, _report("decoded boxes" + decoding, pred.boxes[0], mm_boxes))
        mm_scores = _flat(mm_out[0], c).sigmoid()
        if len(mm_out) > 2:
            mm_scores = mm_scores * _flat(mm_out[2], 1).sigmoid()
        ours_scores = pred.scores ** 2 if name == "atss" else pred.scores
        worst = max(worst, _report(f"scores ({score_rule})", ours_scores, mm_scores))
    return worst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS) + ["all"], default="all")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mmcv-lite", action="store_true",
                        help="patch mmcv-lite's version and stub mmcv._ext so mmdetection 3.3 imports")
    args = parser.parse_args(argv)
    try:
        if args.mmcv_lite:
            _mmcv_lite_shim()
        import mmdet  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"tools/compare_mmdet.py needs mmdetection: pip install mmdet==3.3.0 mmengine==0.10.7 "
                         f"mmcv==2.1.0 (or mmcv-lite with --mmcv-lite); import failed: {e}")
    names = sorted(MODELS) if args.model == "all" else [args.model]
    results = {n: compare(n, args.height, args.width, args.seed) for n in names}
    print("largest relative difference per model: " + ", ".join(f"{n} {v:.1e}" for n, v in results.items()))


if __name__ == "__main__":
    from maskrcnn_benchmark.utils.errors import run_tool  # user-input errors: status 2, no traceback

    run_tool(main)
