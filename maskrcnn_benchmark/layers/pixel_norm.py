"""Pixel normalisation, the one home of the ``INPUT.PIXEL_MEAN`` / ``PIXEL_STD`` / ``TO_BGR255`` rule.

The data loader hands the model uint8 images (BGR, 0..255, zero-padded into one batch tensor);
the model normalises them on its own device (:class:`PixelNormalizer`, owned by
:class:`~maskrcnn_benchmark.modeling.detector.GeneralizedRCNN`), as detectron2 does. The float32
values are those the former loader produced, bit for bit: the same operations in the same order
(:func:`normalize_pixels`), and zero outside each image's own size (the padding was zeros in the
normalised space).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["normalize_pixels", "PixelNormalizer"]


def normalize_pixels(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, to_bgr255: bool,
                     channel_dim: int = -3, dtype: torch.dtype = torch.float32,
                     std_is_one: bool = False) -> torch.Tensor:
    """Normalise BGR 0..255 images.

    Args:
        x: images with 3 channels at ``channel_dim`` (Tensor[3, H, W] or [B, 3, H, W]), BGR order,
            0..255, uint8 or float.
        mean, std: per channel, broadcastable against ``x`` (e.g. Tensor[3, 1, 1]), in the output's
            order and scale.
        to_bgr255: True (caffe/MSRA weights): keep BGR 0..255, then ``(x - mean) / std``; False
            (torchvision weights): convert to RGB scaled to 0..1 (``flip / 255``), then
            ``(x - mean) / std``.
        dtype: the output's floating dtype when ``x`` is not floating (float input keeps its own).
        std_is_one: the caller knows every ``std`` is 1 (host-side): the division, exact then,
            is skipped for a uint8 ``x`` with ``to_bgr255``.

    Returns a new floating tensor of ``x``'s shape (never ``x`` itself).
    """
    if x.shape[channel_dim] != 3:
        raise ValueError(f"normalize_pixels: expected 3 channels at dim {channel_dim}, got shape "
                         f"{tuple(x.shape)}")
    if not to_bgr255:
        x = x.to(dtype) if not x.is_floating_point() else x
        x = x.flip(channel_dim) / 255.0  # BGR -> RGB in 0..1
        return x.sub_(mean).div_(std)
    if not x.is_floating_point():  # a new tensor: subtract and divide in place (2x faster than
        x = x.to(dtype).sub_(mean)  # a promoting x - mean on the CPU; the same values)
        return x if std_is_one else x.div_(std)
    return (x - mean).div_(std)


class PixelNormalizer(nn.Module):
    """uint8 batch -> normalised float batch, zero outside each image (the model's first step).

    Args:
        mean, std: per channel, in the output's order and scale (``INPUT.PIXEL_MEAN`` / ``PIXEL_STD``).
        to_bgr255: the channel order / scale rule of :func:`normalize_pixels` (``INPUT.TO_BGR255``).

    ``mean`` / ``std`` are non-persistent float32 buffers (they follow ``model.to(device)`` and are
    not in the state dict, so checkpoints are unchanged).
    """

    def __init__(self, mean: Sequence[float] = (102.9801, 115.9465, 122.7717),
                 std: Sequence[float] = (1.0, 1.0, 1.0), to_bgr255: bool = True):
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"PixelNormalizer: mean and std need 3 values, got {list(mean)} and {list(std)}")
        if any(float(s) == 0 for s in std):
            raise ValueError(f"PixelNormalizer: std must be non-zero, got {list(std)}")
        self.to_bgr255 = bool(to_bgr255)
        self.std_is_one = all(float(s) == 1.0 for s in std)  # the caffe / MSRA default: no division
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).reshape(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]).reshape(3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
                memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """
        Args:
            images: Tensor[B, 3, H, W] uint8, BGR 0..255, each image at the top left.
            image_sizes: per image ``(h, w)`` inside the batch (None: every image fills it).
            memory_format: of the output (``torch.channels_last`` for a channels-last model).
        Returns:
            Tensor[B, 3, H, W] in the buffers' dtype (float32 unless the model was cast): the
            normalised pixels of each image inside its ``(h, w)``, 0 outside (host-known sizes:
            a few slice fills, no device sync).
        """
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"PixelNormalizer: expected a uint8 Tensor[B, 3, H, W], got "
                             f"{images.dtype} of shape {tuple(images.shape)}")
        x = images.contiguous(memory_format=memory_format)  # a uint8 copy at most (1 byte per value)
        x = normalize_pixels(x, self.mean, self.std, self.to_bgr255, channel_dim=1, dtype=self.mean.dtype,
                             std_is_one=self.std_is_one)
        if memory_format is not torch.contiguous_format:
            x = x.contiguous(memory_format=memory_format)
        height, width = x.shape[-2:]
        for i, (h, w) in enumerate(image_sizes or ()):
            if h < height:
                x[i, :, h:].zero_()
            if w < width:
                x[i, :, :h, w:].zero_()
        return x

    def extra_repr(self) -> str:
        return (f"mean={[round(v, 4) for v in self.mean.flatten().tolist()]}, "
                f"std={[round(v, 4) for v in self.std.flatten().tolist()]}, to_bgr255={self.to_bgr255}")
