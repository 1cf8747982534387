"""FLOP and parameter counts per module, with formulas for this project's compiled operators.

``torch.utils.flop_counter.FlopCounterMode`` knows aten's ops (convolution, matmul, ...) and counts
every other op as zero. :func:`register_flop_formulas` registers formulas for the
``torch.ops.maskrcnn_benchmark`` ops (one FLOP = one multiply or one add, as torch counts a
multiply-add as 2):

* ``deform_conv2d`` (DCNv2): the equivalent convolution, ``2 * B * O * (C / groups) * kh * kw * Ho * Wo``,
  plus the modulated bilinear sampling, ``8 * B * C * kh * kw * Ho * Wo`` (per sampled value 4 products
  and 3 sums of the interpolation, 1 product with the mask; the interpolation weights are shared by the
  channels and not counted). ``_deform_conv2d_backward``: twice that (gradients of the input side and
  of the weight side, as torch counts a convolution's backward as two convolutions).
* ``box_iou`` (N x M): ``12 * N * M + 3 * (N + M)`` (per pair 4 max/min, 2 differences, 2 clamps,
  1 product, 2 sums for the union, 1 division; per box 2 differences and 1 product for its area).
* ``nms`` / ``batched_nms`` (N boxes): data dependent; counted as the worst case, the IoU of every pair,
  ``12 * N * (N - 1) / 2 + 3 * N`` (``batched_nms`` adds ``4 * N`` for the per-class offsets).
* ``sigmoid_focal_loss`` (N x C logits): ``12 * N * C`` (sigmoid 3, the two log terms 4, the focal
  weight 3, alpha and the sum 2); its backward ``16 * N * C``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["register_flop_formulas", "deform_conv2d_flops", "box_iou_flops", "nms_flops", "focal_loss_flops",
           "count_flops", "count_parameters", "module_table"]

_registered = False

# FLOPs per element, documented in the module docstring.
DCN_SAMPLE_FLOPS = 8
BOX_IOU_PAIR_FLOPS = 12
BOX_AREA_FLOPS = 3
FOCAL_FLOPS = 12
FOCAL_BACKWARD_FLOPS = 16


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def deform_conv2d_flops(input_shape: Sequence[int], weight_shape: Sequence[int], out_shape: Sequence[int],
                        groups: int = 1) -> int:
    """FLOPs of one modulated deformable convolution (see the module docstring).

    input [B, C, H, W], weight [O, C / groups, kh, kw], output [B, O, Ho, Wo]."""
    batch, channels = int(input_shape[0]), int(input_shape[1])
    out_channels, channels_per_group, kh, kw = (int(s) for s in weight_shape)
    ho, wo = int(out_shape[2]), int(out_shape[3])
    conv = 2 * batch * out_channels * channels_per_group * kh * kw * ho * wo
    sampling = DCN_SAMPLE_FLOPS * batch * channels * kh * kw * ho * wo
    return conv + sampling


def box_iou_flops(n: int, m: int) -> int:
    """FLOPs of the pairwise IoU of N and M boxes."""
    return BOX_IOU_PAIR_FLOPS * n * m + BOX_AREA_FLOPS * (n + m)


def nms_flops(n: int) -> int:
    """Worst-case FLOPs of NMS over N boxes: the IoU of every pair."""
    return BOX_IOU_PAIR_FLOPS * n * (n - 1) // 2 + BOX_AREA_FLOPS * n


def focal_loss_flops(num_elements: int, backward: bool = False) -> int:
    """FLOPs of the sigmoid focal loss (or its backward) over ``num_elements`` logits."""
    return (FOCAL_BACKWARD_FLOPS if backward else FOCAL_FLOPS) * num_elements


def register_flop_formulas() -> None:
    """Register the formulas above with ``torch.utils.flop_counter`` (once; loads the compiled ops)."""
    global _registered
    if _registered:
        return
    from torch.utils.flop_counter import register_flop_formula

    from maskrcnn_benchmark.layers._ops import load_ops

    ops = load_ops()  # registers every op, deform_conv2d included

    @register_flop_formula(ops.deform_conv2d)
    def _dcn(input_shape, weight_shape, offset_shape, mask_shape, bias_shape, stride_h, stride_w, pad_h, pad_w,
             dil_h, dil_w, groups, deformable_groups, *, out_shape, **kwargs) -> int:
        return deform_conv2d_flops(input_shape, weight_shape, out_shape, groups)

    @register_flop_formula(ops._deform_conv2d_backward)
    def _dcn_backward(grad_out_shape, input_shape, weight_shape, offset_shape, mask_shape, stride_h, stride_w,
                      pad_h, pad_w, dil_h, dil_w, groups, deformable_groups, *, out_shape, **kwargs) -> int:
        return 2 * deform_conv2d_flops(input_shape, weight_shape, grad_out_shape, groups)

    @register_flop_formula(ops.box_iou)
    def _box_iou(boxes1_shape, boxes2_shape, *, out_shape, **kwargs) -> int:
        return box_iou_flops(int(boxes1_shape[0]), int(boxes2_shape[0]))

    @register_flop_formula(ops.nms)
    def _nms(boxes_shape, scores_shape, iou_threshold, *, out_shape, **kwargs) -> int:
        return nms_flops(int(boxes_shape[0]))

    @register_flop_formula(ops.batched_nms)
    def _batched_nms(boxes_shape, scores_shape, idxs_shape, iou_threshold, *, out_shape, **kwargs) -> int:
        n = int(boxes_shape[0])
        return nms_flops(n) + 4 * n

    @register_flop_formula(ops.sigmoid_focal_loss)
    def _focal(logits_shape, targets_shape, gamma, alpha, *, out_shape, **kwargs) -> int:
        return focal_loss_flops(_prod(logits_shape))

    @register_flop_formula(ops.sigmoid_focal_loss_backward)
    def _focal_backward(grad_shape, logits_shape, targets_shape, gamma, alpha, *, out_shape, **kwargs) -> int:
        return focal_loss_flops(_prod(logits_shape), backward=True)

    _registered = True


def count_flops(model: nn.Module, *inputs: Any, depth: int = 3) -> Tuple[int, Dict[str, Dict[Any, int]]]:
    """Run ``model(*inputs)`` under ``FlopCounterMode`` (no grad) with this project's formulas registered.

    Returns: ``(total FLOPs, {module name: {op: FLOPs}})``; module names are the root's class name
    followed by attribute paths (``"GeneralizedRCNN.backbone.body"``), down to ``depth`` levels.
    """
    from torch.utils.flop_counter import FlopCounterMode

    register_flop_formulas()
    counter = FlopCounterMode(depth=depth, display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    return int(counter.get_total_flops()), counter.get_flop_counts()


def count_parameters(model: nn.Module, depth: int = 3) -> "OrderedDict[str, Tuple[int, int]]":
    """``{module name: (parameters, trainable parameters)}`` for the root and its submodules down to
    ``depth`` levels, named like :func:`count_flops` (root class name + attribute path)."""
    root = type(model).__name__
    out: "OrderedDict[str, Tuple[int, int]]" = OrderedDict()
    for name, module in model.named_modules():
        level = 0 if not name else name.count(".") + 1
        if level > depth:
            continue
        params = list(module.parameters())
        out[root if not name else f"{root}.{name}"] = (sum(p.numel() for p in params),
                                                        sum(p.numel() for p in params if p.requires_grad))
    return out


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{unit}"
    return str(int(n))


def module_table(params: Dict[str, Tuple[int, int]], flops: Dict[str, Dict[Any, int]],
                 extra_rows: Optional[List[str]] = None, depth: int = 3) -> str:
    """A text table: module, parameters, trainable parameters, FLOPs, FLOP share of the total, for the
    modules down to ``depth`` levels below the root."""
    total = sum(flops.get("Global", {}).values())
    names = list(params) + [n for n in flops if n not in params and n != "Global" and n.count(".") <= depth]
    rows = [("module", "params", "trainable", "FLOPs", "% FLOPs")]
    for name in names:
        p, t = params.get(name, (0, 0))
        f = sum(flops.get(name, {}).values())
        depth = name.count(".")
        rows.append(("  " * depth + name.split(".")[-1] if depth else name, _human(p), _human(t), _human(f),
                     f"{100.0 * f / total:.1f}" if total else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + list(extra_rows or []))
