"""Batch normalisation with frozen statistics and affine parameters; SyncBN conversion (MODEL.USE_SYNCBN)."""
import logging
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .winograd import is_plain_conv2d

# Device types on which torch's SyncBatchNorm can synchronise statistics (torch 2.13: not the CPU).
SYNC_BN_DEVICE_TYPES = ("cuda", "xpu", "hpu")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers (never trained).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, computed as one
    per-channel scale and shift. All four tensors are buffers, so they are saved in the
    ``state_dict`` under the same names as ``nn.BatchNorm2d`` but are not parameters.

    ``eps`` defaults to 0 as in maskrcnn-benchmark: the caffe2 MSRA ImageNet weights store BN
    already folded into an affine scale/shift (``*_bn_s``, ``*_bn_b``) with no running statistics,
    so ``running_mean = 0``, ``running_var = 1`` and ``eps = 0`` reproduce them exactly.
    (``convert_torchvision_resnet_weights`` folds torchvision's eps = 1e-5 into ``running_var``.)

    A checkpoint that lacks ``running_mean`` / ``running_var`` (caffe2 weights converted by other
    tools) loads with the identity statistics 0 / 1, and torchvision's ``num_batches_tracked`` is
    ignored, so ``load_state_dict(strict=True)`` accepts both formats.

    Args:
        num_features: channels C.
        eps: added to ``running_var`` before the square root.

    Shape: x [N, C, H, W] -> [N, C, H, W] (any dtype; the scale and shift are cast to x's dtype).
    """

    def __init__(self, num_features: int, eps: float = 0.0):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def scale_and_shift(self, dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scale [C], shift [C]), computed in ``dtype`` (default: the buffers' dtype):
        ``forward(x) = x * scale + shift``."""
        weight, bias, mean, var = (t if dtype is None else t.to(dtype)
                                   for t in (self.weight, self.bias, self.running_mean, self.running_var))
        scale = weight * (var + self.eps).rsqrt()
        return scale, bias - mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        scale = scale.to(x.dtype).reshape(1, -1, 1, 1)
        shift = shift.to(x.dtype).reshape(1, -1, 1, 1)
        # the shift is added in place to the product: the same two float ops as x * scale + shift
        # (bit-identical) with one full-size temporary less (a fresh allocation costs page faults)
        return (x * scale).add_(shift)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, local_metadata: Dict,
                              strict: bool, missing_keys: List[str], unexpected_keys: List[str],
                              error_msgs: List[str]) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        if prefix + "weight" in state_dict:
            # Affine-only checkpoint (caffe2 style): identity statistics.
            if prefix + "running_mean" not in state_dict:
                state_dict[prefix + "running_mean"] = torch.zeros_like(self.running_mean)
            if prefix + "running_var" not in state_dict:
                state_dict[prefix + "running_var"] = torch.ones_like(self.running_var)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Return ``module`` with every ``nn.BatchNorm2d`` / ``SyncBatchNorm`` replaced (recursively)
        by a FrozenBatchNorm2d holding its current statistics, affine parameters and eps."""
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, eps=module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module


def _conv_output_numel(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """Number of elements of ``conv(x)`` (N x C_out x H_out x W_out), from the shapes alone."""
    size = x.shape[0] * conv.out_channels
    for dim, (k, s, p, d) in enumerate(zip(conv.kernel_size, conv.stride, conv.padding, conv.dilation)):
        size *= max(0, (x.shape[2 + dim] + 2 * p - d * (k - 1) - 1) // s + 1)
    return size


def conv_norm(conv: nn.Module, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))``; one biased convolution when ``norm`` is a FrozenBatchNorm2d after a plain
    ``nn.Conv2d`` (the ResNet stem, blocks and shortcuts with FrozenBN).

    The frozen norm is an affine map per output channel, so ``bn(conv(x, W)) = conv(x, W * s) + t``
    with ``(s, t) = bn.scale_and_shift()``: the fused weight ``W * s`` is formed at every call (a
    weight-sized op, differentiable, so W still trains and gets ``grad(W * s) * s``) and the shift
    is the conv's bias. This saves the norm's two passes over the activation in the forward and
    its multiply in the backward, at the price of one weight-sized multiply per call (and its
    gradient). So a pair is fused only where the weight has no more elements than the conv's
    output (an R-50 at 512 x 768: 38 of its 53 pairs, all but res4's 3x3 convs and res5; at 800 x
    1344: 48; at 256 x 384: 31): BENCHMARKS.md section 9 has the measured effect. The output
    equals the two-step one up to float32 rounding (the products ``W * s`` are rounded once, ~1e-7
    relative per layer, tested). Any other pair
    (trainable BatchNorm, GroupNorm, a deformable conv, an ``nn.Identity`` left by
    :func:`fold_frozen_batchnorm`) runs as ``norm(conv(x))``.

    Shape: x [N, C_in, H, W] -> [N, C_out, H', W'].
    """
    if not is_plain_conv2d(conv) or not isinstance(norm, FrozenBatchNorm2d) or conv.padding_mode != "zeros":
        return norm(conv(x))
    if not torch.compiler.is_exporting() and conv.weight.numel() > _conv_output_numel(conv, x):
        # (torch.export: no decision on the symbolic input size; always fused)
        # deep, low-resolution layers (an R-50's res5 on small inputs): scaling the output is cheaper
        return norm(conv(x))
    scale, shift = norm.scale_and_shift()
    weight = conv.weight * scale.to(conv.weight.dtype).reshape(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    # the conv's own forward with these parameters (F.conv2d; Winograd for a WinogradConv2d)
    return conv._conv_forward(x, weight, bias.to(weight.dtype))


def convert_sync_batchnorm(module: nn.Module, enabled: bool, world_size: int, device: Union[str, torch.device],
                           logger: Optional[logging.Logger] = None) -> nn.Module:
    """MODEL.USE_SYNCBN: replace every trainable ``nn.BatchNorm*d`` of ``module`` by ``nn.SyncBatchNorm``
    (same parameters and running statistics) so that distributed training normalises over the global batch.

    Only real BatchNorm layers change: ``FrozenBatchNorm2d`` (the ResNet default: fixed statistics, nothing
    to synchronise) and ``GroupNorm`` (per-sample statistics) are left as they are, so with the shipped
    FrozenBN / GN configs this is a no-op (logged). Nothing happens when ``enabled`` is False or
    ``world_size <= 1``. torch's SyncBatchNorm runs only on :data:`SYNC_BN_DEVICE_TYPES`: on the CPU
    (gloo) the layers stay per-process BatchNorm, with a warning. Call before building the optimizer
    and wrapping in DDP.

    Returns: ``module`` (converted in place where possible) or its converted copy.
    """
    logger = logger or logging.getLogger("maskrcnn_benchmark.syncbn")
    if not enabled:
        return module
    num_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
                 for m in module.modules())
    if world_size <= 1:
        logger.info("MODEL.USE_SYNCBN: one process, nothing to synchronise; %d BatchNorm layer(s) left as they are",
                    num_bn)
        return module
    if num_bn == 0:
        logger.info("MODEL.USE_SYNCBN: the model has no trainable BatchNorm layer (FrozenBatchNorm2d and "
                    "GroupNorm need no synchronisation); nothing converted")
        return module
    device_type = torch.device(device).type
    if device_type not in SYNC_BN_DEVICE_TYPES:
        msg = (f"MODEL.USE_SYNCBN: torch.nn.SyncBatchNorm supports only {'/'.join(SYNC_BN_DEVICE_TYPES)} tensors, "
               f"not {device_type}; the {num_bn} BatchNorm layer(s) stay per-process BatchNorm (statistics of "
               f"each process's own batch) on the {world_size} {device_type} processes")
        logger.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return module
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    logger.info("MODEL.USE_SYNCBN: %d BatchNorm layer(s) converted to SyncBatchNorm over %d processes",
                num_bn, world_size)
    return converted


def _fold_into_conv(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> nn.Conv2d:
    """A new conv of ``conv``'s class (``nn.Conv2d`` or ``WinogradConv2d``) computing
    ``bn(conv(x))``: weight ``W * s`` (per output channel), bias ``b * s + t`` with ``s = weight / sqrt(running_var + eps)``, ``t = bias - running_mean * s``.
    Folded in float64 and cast back to the conv's dtype, on the conv's device and memory format."""
    w = conv.weight.detach()
    scale, shift = bn.scale_and_shift(torch.float64)
    bias = shift if conv.bias is None else conv.bias.detach().double() * scale + shift
    fused = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      padding_mode=conv.padding_mode, device="meta")
    # elementwise ops and .to(dtype) keep w's memory format (channels-last stays channels-last)
    requires_grad = conv.weight.requires_grad
    fused.weight = nn.Parameter((w.double() * scale.reshape(-1, 1, 1, 1)).to(w.dtype), requires_grad)
    fused.bias = nn.Parameter(bias.to(w.dtype), requires_grad)
    return fused


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every ``FrozenBatchNorm2d`` that directly follows an ``nn.Conv2d`` into that conv, in place
    (TEST.FOLD_FROZEN_BN; an inference-only transformation).

    A pair is a child conv ``convK`` / ``conv`` with its sibling ``bnK`` / ``bn`` (the ResNet stem and
    blocks: each block's forward is ``bnK(convK(x))``), or a conv at position i of an ``nn.Sequential``
    followed by the FrozenBatchNorm2d at i + 1 (the projection shortcuts). The conv becomes a biased
    conv computing both (:func:`_fold_into_conv`) and the norm an ``nn.Identity``, so the forward is
    unchanged except for float32 rounding (the products ``W * s`` are rounded once: detections move
    by ~1e-5 relative, tested). Deformable convs, GroupNorm and trainable BatchNorm are left alone.

    The folded model has other state-dict keys (conv biases, no norm buffers): use it for inference
    and export, not for saving or training.

    Returns: the number of norms folded.
    """
    folded = 0
    for parent in list(module.modules()):
        if isinstance(parent, nn.Sequential):
            children = list(parent._modules.items())
            for (name_c, conv), (name_b, bn) in zip(children, children[1:]):
                if is_plain_conv2d(conv) and isinstance(bn, FrozenBatchNorm2d):
                    parent._modules[name_c] = _fold_into_conv(conv, bn)
                    parent._modules[name_b] = nn.Identity()
                    folded += 1
            continue
        for name_b, bn in list(parent.named_children()):
            if not isinstance(bn, FrozenBatchNorm2d) or not name_b.startswith("bn"):
                continue
            name_c = "conv" + name_b[2:]
            conv = getattr(parent, name_c, None)
            if is_plain_conv2d(conv) and conv.out_channels == bn.num_features:
                setattr(parent, name_c, _fold_into_conv(conv, bn))
                setattr(parent, name_b, nn.Identity())
                folded += 1
    return folded
