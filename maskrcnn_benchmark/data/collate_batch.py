"""Collate ``(image, target, index)`` samples into a padded batch."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList, to_image_list


class BatchCollator:
    """``samples -> (ImageList, targets, indices)``.

    Images (Tensor[3, Hi, Wi], uint8 BGR 0..255 from the loaders' transforms) are copied into ONE
    preallocated Tensor[B, 3, H, W] of their dtype, zero-padded at the bottom/right, with ``H``,
    ``W`` multiples of ``size_divisible`` (when > 0; :func:`to_image_list`); the model normalises
    the batch on its device. ``targets`` is a list of the samples' BoxLists, ``indices`` a tuple of
    their dataset indices. On a CUDA model the loader pins the batch (``ImageList.pin_memory``).
    """

    def __init__(self, size_divisible: int = 0):
        self.size_divisible = int(size_divisible)

    def __call__(self, batch: Sequence[Tuple[torch.Tensor, BoxList, int]]
                 ) -> Tuple[ImageList, List[BoxList], Tuple[int, ...]]:
        images, targets, indices = zip(*batch)
        return to_image_list(list(images), self.size_divisible), list(targets), tuple(indices)
