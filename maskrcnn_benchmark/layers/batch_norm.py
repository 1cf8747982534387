"""Batch normalisation with frozen statistics and affine parameters; SyncBN conversion (MODEL.USE_SYNCBN)."""
import logging
import warnings
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
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
