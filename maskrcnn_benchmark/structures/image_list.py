"""A batch of images of different sizes padded into one tensor."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import torch


class ImageList:
    """``tensors``: Tensor[B, C, H, W] (zero-padded); ``image_sizes``: list of (h, w) before padding.

    From the data loaders ``tensors`` is uint8 (BGR 0..255, the model normalises it on its device);
    a floating ``tensors`` is taken by the model as already normalised."""

    def __init__(self, tensors: torch.Tensor, image_sizes: List[Tuple[int, int]]):
        self.tensors = tensors
        self.image_sizes = [tuple(int(v) for v in s) for s in image_sizes]

    def to(self, device, non_blocking: bool = False) -> "ImageList":
        """The batch on ``device``; ``non_blocking`` (from pinned memory) does not wait for the copy."""
        return ImageList(self.tensors.to(device, non_blocking=non_blocking), self.image_sizes)

    def pin_memory(self) -> "ImageList":
        """The batch in page-locked host memory (``DataLoader(pin_memory=True)`` calls this)."""
        return ImageList(self.tensors.pin_memory(), self.image_sizes)


def to_image_list(tensors: Union[torch.Tensor, Sequence[torch.Tensor], ImageList],
                  size_divisible: int = 0) -> ImageList:
    """Pad a list of Tensor[C, Hi, Wi] (or a batched tensor) into an ImageList.

    The padded height and width are multiples of ``size_divisible`` when it is > 0. The batch is
    one tensor of the images' dtype (uint8 from the loaders), allocated once; each image (any
    strides: the loaders' CHW views of HWC arrays are copied straight in) is copied to its top
    left and only the padding around it is zeroed.
    """
    if isinstance(tensors, ImageList):
        return tensors
    if isinstance(tensors, torch.Tensor) and tensors.ndim == 3:
        tensors = tensors[None]
    if isinstance(tensors, torch.Tensor) and tensors.ndim == 4 and (
            size_divisible <= 0 or (tensors.shape[-2] % size_divisible == 0
                                    and tensors.shape[-1] % size_divisible == 0)):
        return ImageList(tensors, [tuple(tensors.shape[-2:])] * tensors.shape[0])  # no padding needed
    tensors = list(tensors)
    if not tensors:
        raise ValueError("to_image_list: no images")
    for i, t in enumerate(tensors):
        if t.ndim != 3:
            raise ValueError(f"to_image_list: image {i} must be [C, H, W], got {tuple(t.shape)}")
        if t.shape[0] != tensors[0].shape[0] or t.dtype != tensors[0].dtype:
            raise ValueError(f"to_image_list: image {i} is {t.dtype} [C, H, W] {tuple(t.shape)}, image 0 "
                             f"{tensors[0].dtype} {tuple(tensors[0].shape)}: channels and dtype must match")
    c = tensors[0].shape[0]
    h = max(t.shape[1] for t in tensors)
    w = max(t.shape[2] for t in tensors)
    if size_divisible > 0:
        h = int(math.ceil(h / size_divisible) * size_divisible)
        w = int(math.ceil(w / size_divisible) * size_divisible)
    batched = tensors[0].new_empty((len(tensors), c, h, w))
    for img, pad in zip(tensors, batched):
        ih, iw = img.shape[1:]
        pad[:, :ih, :iw].copy_(img)
        if ih < h:
            pad[:, ih:].zero_()
        if iw < w:
            pad[:, :ih, iw:].zero_()
    return ImageList(batched, [tuple(t.shape[-2:]) for t in tensors])
