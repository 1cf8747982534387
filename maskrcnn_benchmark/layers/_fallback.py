"""Portable plain-PyTorch kernels of the compiled operators, for devices without a compiled kernel.

The compiled library ``maskrcnn_benchmark._C`` has CPU kernels only. :mod:`._ops` registers the
functions of this module (see :data:`FALLBACK_KERNELS`) as the ``cuda`` (and ``xpu``/``mps``)
kernels of every ``maskrcnn_benchmark::<op>`` that has no compiled kernel for that device, so the
toolkit runs on a GPU (slower) until the CUDA kernels land. They are plain functions of tensors
and work on any device, so the tests call them directly on CPU tensors and compare them with the
compiled CPU kernels.

Argument order follows the operator schemas (csrc/ops.cpp, csrc/cpu/deform_conv_kernel.cpp), e.g.
``deform_conv2d(input, weight, offset, mask, bias, stride_h, ...)``, which differs from the Python
wrapper :func:`maskrcnn_benchmark.layers.dcn.deform_conv2d`.

Costs (N boxes):
- ``nms``/``batched_nms``: the [N, N] suppression matrix is computed on the device in row blocks
  (``_NMS_BLOCK_ELEMS`` IoU values at a time), kept as N^2 bools on the device and copied to the
  host ONCE per call (N^2 bytes, e.g. 25 MB for N = 5000); the greedy loop then runs on the host
  with one numpy step per KEPT box (O(K * N); ~10 ms for N = 5000, K = 4400), plus one device
  synchronisation. The matrix costs O(N^2) device work (on one CPU thread ~1 s for N = 5000, where
  the compiled kernel takes ~50 ms; on a GPU it is small next to the host copy).
- ``box_iou``, ``sigmoid_focal_loss`` (+ backward): element-wise torch ops, a few temporaries of
  the output's size.
- ``deform_conv2d`` (+ backward): per image, four gathers of [C, kh * kw, Ho * Wo] corner values
  (bilinear sampling) and a grouped matmul; backward adds scatter_add for the input gradient.
  Peak memory ~ 5-8 x C * kh * kw * Ho * Wo elements per image.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "nms",
    "batched_nms",
    "box_iou",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_backward",
    "deform_conv2d",
    "deform_conv2d_backward",
    "FALLBACK_KERNELS",
]

# IoU values computed per block of rows of the NMS suppression matrix (bounds device temporaries).
_NMS_BLOCK_ELEMS = 1 << 24


# --------------------------------------------------------------------------------------- boxes
def _check_boxes(boxes: Tensor, op: str, name: str) -> None:
    torch._check(boxes.dim() == 2 and boxes.size(1) == 4,
                 lambda: f"{op}: {name} must have shape [N, 4], got {list(boxes.shape)}")
    torch._check(boxes.is_floating_point(), lambda: f"{op}: {name} must be floating point, got {boxes.dtype}")


def _iou_block(rows: Tensor, rows_area: Tensor, cols: Tensor, cols_area: Tensor) -> Tensor:
    """IoU [R, M] of rows [R, 4] against cols [M, 4], written as the compiled kernels (0 where union <= 0)."""
    w = torch.minimum(rows[:, None, 2], cols[None, :, 2]) - torch.maximum(rows[:, None, 0], cols[None, :, 0])
    h = torch.minimum(rows[:, None, 3], cols[None, :, 3]) - torch.maximum(rows[:, None, 1], cols[None, :, 1])
    zero = w.new_zeros(())
    inter = torch.where(w > 0, w, zero) * torch.where(h > 0, h, zero)  # NaN extents count as 0, as in C++
    union = rows_area[:, None] + cols_area[None, :] - inter
    return inter / torch.where(union > 0, union, torch.ones_like(union))


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU [N, M] of boxes1 [N, 4] and boxes2 [M, 4] (x1, y1, x2, y2); 0 where the union is 0."""
    _check_boxes(boxes1, "box_iou", "boxes1")
    _check_boxes(boxes2, "box_iou", "boxes2")
    torch._check(boxes1.dtype == boxes2.dtype,
                 lambda: f"box_iou: boxes1 and boxes2 must have the same dtype, got {boxes1.dtype} and {boxes2.dtype}")
    torch._check(boxes1.device == boxes2.device,
                 lambda: f"box_iou: boxes1 and boxes2 must be on the same device, got {boxes1.device} and {boxes2.device}")
    if boxes1.size(0) == 0 or boxes2.size(0) == 0:
        return boxes1.new_zeros((boxes1.size(0), boxes2.size(0)))
    return _iou_block(boxes1, _area(boxes1), boxes2, _area(boxes2))


def _greedy_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Optional[Tensor]) -> Tensor:
    """Greedy NMS in decreasing score order (stable); boxes of different ``idxs`` never interact."""
    n = boxes.size(0)
    device = boxes.device
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=device)
    order = torch.sort(scores, stable=True, descending=True)[1]
    b = boxes.index_select(0, order)
    area = _area(b)
    cls = idxs.index_select(0, order) if idxs is not None else None
    block = max(1, _NMS_BLOCK_ELEMS // n)
    chunks = []
    for start in range(0, n, block):  # row blocks of the suppression matrix (not a loop over boxes)
        stop = min(n, start + block)
        sup = _iou_block(b[start:stop], area[start:stop], b, area) > iou_threshold
        if cls is not None:
            sup &= cls[start:stop, None] == cls[None, :]  # class-aware: exact, independent of coordinates
        chunks.append(sup)
    suppress = (chunks[0] if len(chunks) == 1 else torch.cat(chunks)).cpu().numpy()  # the one host copy

    removed = np.zeros(n, dtype=bool)
    keep = []
    i = 0
    while True:  # one iteration per kept box
        keep.append(i)
        if i + 1 >= n:
            break
        rest = removed[i + 1:]
        rest |= suppress[i, i + 1:]
        nxt = int(np.argmin(rest))  # first box still alive after i
        if rest[nxt]:
            break
        i = i + 1 + nxt
    kept = torch.as_tensor(keep, dtype=torch.int64)
    if device.type != "cpu":  # page-locked: an asynchronous copy back, no second sync
        kept = kept.pin_memory()
    return order[kept.to(device, non_blocking=True)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: [K] int64 indices of kept boxes in decreasing score order (ties: input order).

    boxes [N, 4] (x1, y1, x2, y2), scores [N]; a box is suppressed when its IoU with a kept box is
    > iou_threshold.
    """
    _check_boxes(boxes, "nms", "boxes")
    torch._check(scores.dim() == 1 and scores.size(0) == boxes.size(0),
                 lambda: f"nms: scores must have shape [{boxes.size(0)}], got {list(scores.shape)}")
    torch._check(scores.is_floating_point(), lambda: f"nms: scores must be floating point, got {scores.dtype}")
    return _greedy_nms(boxes, scores, iou_threshold, None)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: as :func:`nms`, but boxes with different ``idxs`` [N] never suppress each other.

    The suppression matrix is masked with ``idxs[i] == idxs[j]`` (no coordinate-offset trick), so
    the result does not depend on the magnitude of the coordinates.
    """
    _check_boxes(boxes, "batched_nms", "boxes")
    torch._check(scores.dim() == 1 and scores.size(0) == boxes.size(0),
                 lambda: f"batched_nms: scores must have shape [{boxes.size(0)}], got {list(scores.shape)}")
    torch._check(scores.is_floating_point(),
                 lambda: f"batched_nms: scores must be floating point, got {scores.dtype}")
    torch._check(idxs.dim() == 1 and idxs.size(0) == boxes.size(0),
                 lambda: f"batched_nms: idxs must have shape [{boxes.size(0)}], got {list(idxs.shape)}")
    torch._check(not idxs.is_floating_point() and not idxs.is_complex(),
                 lambda: f"batched_nms: idxs must be an integer tensor, got {idxs.dtype}")
    return _greedy_nms(boxes, scores, iou_threshold, idxs)


# ---------------------------------------------------------------------------------- focal loss
def _check_focal(logits: Tensor, targets: Tensor, gamma: float, op: str) -> None:
    torch._check(logits.dim() == 2, lambda: f"{op}: logits must have shape [N, C], got {list(logits.shape)}")
    torch._check(logits.is_floating_point(), lambda: f"{op}: logits must be floating point, got {logits.dtype}")
    torch._check(targets.dim() == 1 and targets.size(0) == logits.size(0),
                 lambda: f"{op}: targets must have shape [{logits.size(0)}], got {list(targets.shape)}")
    torch._check(targets.dtype in (torch.int64, torch.int32),
                 lambda: f"{op}: targets must be int64 or int32, got {targets.dtype}")
    torch._check(gamma >= 0, lambda: f"{op}: gamma must be >= 0, got {gamma}")


def _focal_terms(logits: Tensor):
    """p, q = 1 - p, log p, log q from logits, with e = exp(-|x|) (no overflow, no log(0))."""
    x = logits
    e = torch.exp(-x.abs())
    l = torch.log1p(e)
    inv = 1.0 / (1.0 + e)
    e_inv = e * inv
    nonneg = x >= 0
    p = torch.where(nonneg, inv, e_inv)
    q = torch.where(nonneg, e_inv, inv)
    log_p = torch.clamp(x, max=0) - l
    log_q = -torch.clamp(x, min=0) - l
    return p, q, log_p, log_q


def _focal_masks(logits: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
    """is_pos [N, C] (column targets - 1 for targets in 1..C) and ignored rows [N, 1] (targets < 0)."""
    t = targets.to(torch.int64)[:, None]
    cols = torch.arange(logits.size(1), device=logits.device)[None, :]
    return (t - 1) == cols, t < 0


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, gamma: float, alpha: float) -> Tensor:
    """Element-wise sigmoid focal loss [N, C] from logits [N, C] and targets [N] (1..C, 0 bg, -1 ignore).

    Positive column: ``-alpha (1 - p)^gamma log p``; others ``-(1 - alpha) p^gamma log(1 - p)``.
    Not differentiable by itself: the gradient is :func:`sigmoid_focal_loss_backward` (the op's
    registered autograd formula calls it).
    """
    _check_focal(logits, targets, gamma, "sigmoid_focal_loss")
    if logits.numel() == 0:
        return torch.empty_like(logits, memory_format=torch.contiguous_format)
    p, q, log_p, log_q = _focal_terms(logits)
    neg = -(1.0 - alpha) * p.pow(gamma) * log_q
    pos = -alpha * q.pow(gamma) * log_p
    is_pos, ignored = _focal_masks(logits, targets)
    loss = torch.where(is_pos, pos, neg)
    return torch.where(ignored, torch.zeros_like(loss), loss).contiguous()


def sigmoid_focal_loss_backward(grad_output: Tensor, logits: Tensor, targets: Tensor, gamma: float,
                                alpha: float) -> Tensor:
    """d loss / d logits [N, C] times grad_output [N, C] (signature of the compiled backward op).

    Negatives: ``(1 - alpha) p^gamma (p - gamma q log q)``; positive column:
    ``alpha q^gamma (gamma p log p - q)``; ignored rows 0.
    """
    _check_focal(logits, targets, gamma, "sigmoid_focal_loss_backward")
    torch._check(grad_output.shape == logits.shape,
                 lambda: f"sigmoid_focal_loss_backward: grad_output must have shape {list(logits.shape)}, "
                         f"got {list(grad_output.shape)}")
    if logits.numel() == 0:
        return torch.empty_like(logits, memory_format=torch.contiguous_format)
    p, q, log_p, log_q = _focal_terms(logits)
    neg = (1.0 - alpha) * p.pow(gamma) * (p - gamma * q * log_q)
    pos = alpha * q.pow(gamma) * (gamma * p * log_p - q)
    is_pos, ignored = _focal_masks(logits, targets)
    grad = torch.where(is_pos, pos, neg) * grad_output
    return torch.where(ignored, torch.zeros_like(grad), grad).contiguous()


# ------------------------------------------------------------------------ deformable convolution
def _dcn_geometry(input: Tensor, weight: Tensor, offset: Tensor, mask: Tensor, stride_h: int, stride_w: int,
                  pad_h: int, pad_w: int, dil_h: int, dil_w: int, groups: int, dg: int):
    torch._check(input.dim() == 4 and weight.dim() == 4 and offset.dim() == 4 and mask.dim() == 4,
                 lambda: "deform_conv2d: input, weight, offset and mask must be 4-D")
    B, C, H, W = input.shape
    O, _, kh, kw = weight.shape
    Ho = (H + 2 * pad_h - dil_h * (kh - 1) - 1) // stride_h + 1
    Wo = (W + 2 * pad_w - dil_w * (kw - 1) - 1) // stride_w + 1
    torch._check(groups > 0 and dg > 0 and C % groups == 0 and O % groups == 0 and C % dg == 0
                 and weight.size(1) * groups == C,
                 lambda: f"deform_conv2d: inconsistent channels: input {C}, weight {list(weight.shape)}, "
                         f"groups {groups}, deformable_groups {dg}")
    torch._check(Ho > 0 and Wo > 0, lambda: f"deform_conv2d: output size would be ({Ho}, {Wo})")
    K = kh * kw
    torch._check(tuple(offset.shape) == (B, 2 * dg * K, Ho, Wo),
                 lambda: f"deform_conv2d: offset must have shape {[B, 2 * dg * K, Ho, Wo]}, got {list(offset.shape)}")
    torch._check(tuple(mask.shape) == (B, dg * K, Ho, Wo),
                 lambda: f"deform_conv2d: mask must have shape {[B, dg * K, Ho, Wo]}, got {list(mask.shape)}")
    return B, C, H, W, O, kh, kw, Ho, Wo


class _Sampling:
    """Bilinear sampling plan and corner values of one image (all deformable groups and taps).

    corner [dg, 1, K*L]: index of the top-left corner in the 1-pixel zero-padded plane
    (0 outside the support (-1, H) x (-1, W)); ly, lx, valid, mask [dg, 1, K*L];
    v00, v01, v10, v11 [dg, C/dg, K*L]: corner values of every channel.
    """

    def __init__(self, padded: Tensor, offset: Tensor, mask: Tensor, geom, params) -> None:
        _, C, H, W, _, kh, kw, Ho, Wo = geom
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, dg = params
        K, L = kh * kw, Ho * Wo
        dev, dtype = padded.device, padded.dtype
        pw = W + 2
        ki = torch.arange(K, device=dev)
        ho = torch.arange(Ho, device=dev).repeat_interleave(Wo)
        wo = torch.arange(Wo, device=dev).repeat(Ho)
        # integer base position of tap k at output pixel l, then + offset in the input dtype
        base_y = ((ho * stride_h - pad_h)[None, :] + ((ki // kw) * dil_h)[:, None]).to(dtype)  # [K, L]
        base_x = ((wo * stride_w - pad_w)[None, :] + ((ki % kw) * dil_w)[:, None]).to(dtype)
        off = offset.reshape(dg, K, 2, L)
        y = base_y + off[:, :, 0]
        x = base_x + off[:, :, 1]  # [dg, K, L]
        valid = (y > -1) & (y < H) & (x > -1) & (x < W)  # False for NaN
        zero = y.new_zeros(())
        fy = torch.where(valid, torch.floor(y), zero)
        fx = torch.where(valid, torch.floor(x), zero)
        ly = torch.where(valid, y - fy, zero)
        lx = torch.where(valid, x - fx, zero)
        corner = torch.where(valid, (fy.long() + 1) * pw + fx.long() + 1, torch.zeros_like(fy, dtype=torch.long))
        self.valid = valid.to(dtype).reshape(dg, 1, K * L)
        self.ly = ly.reshape(dg, 1, K * L)
        self.lx = lx.reshape(dg, 1, K * L)
        self.mask = mask.reshape(dg, 1, K * L)
        self.pw = pw
        cpd = C // dg
        self.index = corner.reshape(dg, 1, K * L).expand(dg, cpd, K * L)
        plane = padded.reshape(dg, cpd, -1)
        self.v00 = torch.gather(plane, 2, self.index)
        self.v01 = torch.gather(plane, 2, self.index + 1)
        self.v10 = torch.gather(plane, 2, self.index + pw)
        self.v11 = torch.gather(plane, 2, self.index + pw + 1)

    def weights(self):
        """Mask-weighted bilinear weights [dg, 1, K*L] of the four corners (0 outside the support)."""
        m = torch.where(self.valid > 0, self.mask, torch.zeros_like(self.mask))
        hy, hx = 1 - self.ly, 1 - self.lx
        return m * hy * hx, m * hy * self.lx, m * self.ly * hx, m * self.ly * self.lx

    def columns(self) -> Tensor:
        """Sampled, mask-weighted columns [dg, C/dg, K*L] (row c*K + k once reshaped to [C*K, L])."""
        w00, w01, w10, w11 = self.weights()
        return w00 * self.v00 + w01 * self.v01 + w10 * self.v10 + w11 * self.v11


def deform_conv2d(input: Tensor, weight: Tensor, offset: Tensor, mask: Tensor, bias: Optional[Tensor],
                  stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
                  groups: int, deformable_groups: int) -> Tensor:
    """Modulated deformable convolution (DCNv2), schema argument order of ``maskrcnn_benchmark::deform_conv2d``.

    input [B, C, H, W], weight [O, C/groups, kh, kw], offset [B, 2*dg*kh*kw, Ho, Wo] ((dy, dx)
    interleaved per tap, per deformable group), mask [B, dg*kh*kw, Ho, Wo], bias [O] or None
    -> [B, O, Ho, Wo]. Bilinear sampling with zeros outside the image, via gathers from the
    zero-padded input, then one grouped matmul per image. Not differentiable by itself (see
    :func:`deform_conv2d_backward`).
    """
    geom = _dcn_geometry(input, weight, offset, mask, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                         groups, deformable_groups)
    B, C, H, W, O, kh, kw, Ho, Wo = geom
    params = (stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, deformable_groups)
    out = input.new_zeros((B, O, Ho, Wo))
    if B > 0:
        padded = torch.nn.functional.pad(input, (1, 1, 1, 1))
        w = weight.reshape(groups, O // groups, -1)
        for b in range(B):  # images (like the compiled kernel), not boxes
            cols = _Sampling(padded[b], offset[b], mask[b], geom, params).columns()
            out[b] = torch.bmm(w, cols.reshape(groups, -1, Ho * Wo)).reshape(O, Ho, Wo)
    if bias is not None:
        out = out + bias.reshape(1, O, 1, 1)
    return out


def deform_conv2d_backward(grad_out: Tensor, input: Tensor, weight: Tensor, offset: Tensor, mask: Tensor,
                           stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
                           groups: int, deformable_groups: int
                           ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (input, weight, offset, mask, bias) of :func:`deform_conv2d` given grad_out [B, O, Ho, Wo].

    Signature of ``maskrcnn_benchmark::_deform_conv2d_backward``; explicit formulas as the
    compiled kernel: with v00..v11 the corners, ly/lx the fractional parts,
    grad_mask = sum_c g * value, grad_dy = m * sum_c g * (bottom - top),
    grad_dx = m * sum_c g * ((1 - ly)(v01 - v00) + ly (v11 - v10)); the input gradient is a
    scatter_add of the bilinear weights (non-deterministic summation order on CUDA).
    """
    geom = _dcn_geometry(input, weight, offset, mask, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                         groups, deformable_groups)
    B, C, H, W, O, kh, kw, Ho, Wo = geom
    torch._check(tuple(grad_out.shape) == (B, O, Ho, Wo),
                 lambda: f"_deform_conv2d_backward: grad_out must have shape {[B, O, Ho, Wo]}, "
                         f"got {list(grad_out.shape)}")
    dg, K, L = deformable_groups, kh * kw, Ho * Wo
    params = (stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, dg)
    grad_input = torch.zeros_like(input, memory_format=torch.contiguous_format)
    grad_weight = torch.zeros_like(weight, memory_format=torch.contiguous_format)
    grad_offset = torch.zeros_like(offset, memory_format=torch.contiguous_format)
    grad_mask = torch.zeros_like(mask, memory_format=torch.contiguous_format)
    grad_bias = grad_out.sum((0, 2, 3))
    if B == 0:
        return grad_input, grad_weight, grad_offset, grad_mask, grad_bias
    padded = torch.nn.functional.pad(input, (1, 1, 1, 1))
    w_t = weight.reshape(groups, O // groups, -1).transpose(1, 2)
    grad_w = grad_weight.view(groups, O // groups, -1)
    for b in range(B):  # images, not boxes
        s = _Sampling(padded[b], offset[b], mask[b], geom, params)
        gout = grad_out[b].reshape(groups, O // groups, L)
        gcol = torch.bmm(w_t, gout).reshape(dg, C // dg, K * L)  # d loss / d columns
        grad_w += torch.bmm(gout, s.columns().reshape(groups, -1, L).transpose(1, 2))
        # input: scatter the bilinear weights into the padded plane, then crop the padding
        gpad = padded.new_zeros((dg, C // dg, (H + 2) * (W + 2)))
        for wgt, shift in zip(s.weights(), (0, 1, s.pw, s.pw + 1)):
            gpad.scatter_add_(2, s.index + shift, wgt * gcol)
        grad_input[b] = gpad.reshape(C, H + 2, W + 2)[:, 1:H + 1, 1:W + 1]
        # offset and mask: per-tap reductions over the channels of each deformable group
        gv = gcol * s.valid
        top = s.v00 + s.lx * (s.v01 - s.v00)
        bottom = s.v10 + s.lx * (s.v11 - s.v10)
        g_m = (gv * (top + s.ly * (bottom - top))).sum(1)  # [dg, K*L]
        g_y = (gv * (bottom - top)).sum(1) * s.mask[:, 0]
        g_x = (gv * ((1 - s.ly) * (s.v01 - s.v00) + s.ly * (s.v11 - s.v10))).sum(1) * s.mask[:, 0]
        grad_mask[b] = g_m.reshape(dg * K, Ho, Wo)
        grad_offset[b] = torch.stack((g_y.reshape(dg, K, L), g_x.reshape(dg, K, L)), dim=2).reshape(2 * dg * K, Ho, Wo)
    return grad_input, grad_weight, grad_offset, grad_mask, grad_bias


# op name (in the ``maskrcnn_benchmark`` namespace) -> portable kernel with the op's schema
FALLBACK_KERNELS: Dict[str, Callable] = {
    "nms": nms,
    "batched_nms": batched_nms,
    "box_iou": box_iou,
    "sigmoid_focal_loss": sigmoid_focal_loss,
    "sigmoid_focal_loss_backward": sigmoid_focal_loss_backward,
    "deform_conv2d": deform_conv2d,
    "_deform_conv2d_backward": deform_conv2d_backward,
}
