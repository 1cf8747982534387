"""Image + box transforms for detection.

Every transform is called as ``image, target = t(image, target)`` where ``image`` is either an
``np.ndarray[H, W, 3]`` uint8 in OpenCV's BGR order (before :class:`ToTensor`) or a
``Tensor[3, H, W]`` (after it: uint8 in the loaders, float under test-time augmentation), and
``target`` is a :class:`BoxList` in the image's pixel coordinates (or ``None``). Random transforms
take an optional ``generator`` (a ``torch.Generator``) and draw from it, else from torch's global
generator. The training loader gives every sample its own seed (:func:`apply_transforms`), so a
sample does not depend on the worker that made it.
"""
from __future__ import annotations

import inspect
from typing import Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from maskrcnn_benchmark.layers.pixel_norm import normalize_pixels
from maskrcnn_benchmark.structures.bounding_box import FLIP_LEFT_RIGHT, BoxList

Image = Union[np.ndarray, torch.Tensor]

__all__ = ["Compose", "Resize", "RandomHorizontalFlip", "ToTensor", "Normalize", "get_size",
           "image_size", "apply_transforms"]


def image_size(image: Image) -> Tuple[int, int]:
    """``(width, height)`` of an HWC array or a CHW tensor."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[-1]), int(image.shape[-2])
    return int(image.shape[1]), int(image.shape[0])


def get_size(image_size_wh: Tuple[int, int], min_size: int, max_size: Optional[int]) -> Tuple[int, int]:
    """Output ``(height, width)`` when the shorter side is scaled to ``min_size`` px, unless that
    makes the longer side exceed ``max_size`` (then the longer side becomes about ``max_size``).

    This is maskrcnn-benchmark's rule, integer truncation included, so sizes match the original.
    """
    w, h = image_size_wh
    size = int(min_size)
    if max_size is not None and max_size > 0:
        min_original = float(min(w, h))
        max_original = float(max(w, h))
        if max_original / min_original * size > max_size:
            size = int(round(max_size * min_original / max_original))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        ow = size
        oh = int(size * h / w)
    else:
        oh = size
        ow = int(size * w / h)
    return oh, ow


def apply_transforms(transforms, image: Image, target: Optional[BoxList] = None, seed: Optional[int] = None):
    """``transforms(image, target)`` whose random draws depend only on ``seed`` (when given).

    A :class:`Compose` gets a ``torch.Generator`` seeded with ``seed``; any other callable runs
    with torch's global generator forked and seeded with ``seed`` (restored afterwards).
    """
    if seed is None:
        return transforms(image, target)
    if isinstance(transforms, Compose):
        return transforms(image, target, generator=torch.Generator().manual_seed(int(seed)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return transforms(image, target)


def _takes_generator(transform) -> bool:
    try:
        return "generator" in inspect.signature(transform).parameters
    except (TypeError, ValueError):
        return False


class Compose:
    """Apply transforms in order.

    ``generator`` goes to each transform that takes a ``generator`` argument (all of this module's);
    any other callable runs with torch's global generator forked and seeded from ``generator``.
    """

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)
        self._takes_generator = [_takes_generator(t) for t in self.transforms]

    def __call__(self, image: Image, target: Optional[BoxList] = None,
                 generator: Optional[torch.Generator] = None):
        for t, takes in zip(self.transforms, self._takes_generator):
            if takes:
                image, target = t(image, target, generator=generator)
            elif generator is None:
                image, target = t(image, target)
            else:
                seed = int(torch.randint(2 ** 62, (1,), generator=generator))
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t}" for t in self.transforms)
        return f"{type(self).__name__}({inner}\n)"


class Resize:
    """Resize keeping the aspect ratio (see :func:`get_size`).

    Args:
        min_size: candidate shorter-side sizes in px; one is drawn uniformly per call
            (a single int, or ``range(lo, hi + 1)`` for MIN_SIZE_RANGE_TRAIN).
        max_size: cap on the longer side in px (``None`` or <= 0: no cap).
    """

    def __init__(self, min_size: Union[int, Sequence[int]], max_size: Optional[int]):
        if isinstance(min_size, int):
            min_size = (min_size,)
        self.min_size = tuple(int(s) for s in min_size)
        if not self.min_size or min(self.min_size) <= 0:
            raise ValueError(f"Resize: min_size must be positive sizes, got {min_size}")
        self.max_size = max_size

    def get_size(self, image_size_wh: Tuple[int, int],
                 generator: Optional[torch.Generator] = None) -> Tuple[int, int]:
        """Draw a shorter side (from ``generator``, else torch's global one) and return the output
        ``(height, width)``."""
        if len(self.min_size) == 1:
            size = self.min_size[0]
        else:
            size = self.min_size[int(torch.randint(len(self.min_size), (1,), generator=generator).item())]
        return get_size(image_size_wh, size, self.max_size)

    def __call__(self, image: Image, target: Optional[BoxList] = None,
                 generator: Optional[torch.Generator] = None):
        oh, ow = self.get_size(image_size(image), generator)
        if (ow, oh) != image_size(image):
            if isinstance(image, torch.Tensor):
                image = F.interpolate(image[None], size=(oh, ow), mode="bilinear",
                                      align_corners=False)[0]
            else:
                image = cv2.resize(image, (ow, oh), interpolation=cv2.INTER_LINEAR)
        if target is not None:
            target = target.resize((ow, oh))
        return image, target

    def __repr__(self) -> str:
        sizes = self.min_size if len(self.min_size) <= 4 else f"{self.min_size[0]}..{self.min_size[-1]}"
        return f"Resize(min_size={sizes}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror the image and its boxes left-right with probability ``prob``."""

    def __init__(self, prob: float = 0.5):
        self.prob = float(prob)

    def __call__(self, image: Image, target: Optional[BoxList] = None,
                 generator: Optional[torch.Generator] = None):
        if self.prob > 0 and torch.rand((), generator=generator).item() < self.prob:
            if isinstance(image, torch.Tensor):
                image = image.flip(-1)
            else:
                image = np.ascontiguousarray(image[:, ::-1])
            if target is not None:
                target = target.transpose(FLIP_LEFT_RIGHT)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(prob={self.prob})"


class ToTensor:
    """``np.ndarray[H, W, 3]`` uint8 BGR -> ``Tensor[3, H, W]`` of ``dtype``, still BGR in 0..255.

    Args:
        dtype: ``torch.float32`` (the default): a float copy (:class:`Normalize` picks the channel
            order and scale); ``torch.uint8``: the image as the loader hands it to the model (which
            normalises on its device, :class:`~maskrcnn_benchmark.layers.pixel_norm.PixelNormalizer`),
            a CHW *view* of the HWC array, not a copy: the collate copies it once, straight into the
            batch (:func:`~maskrcnn_benchmark.structures.image_list.to_image_list`).

    (Unlike torchvision's ``to_tensor`` nothing is rescaled here.) A tensor passes unchanged.
    """

    def __init__(self, dtype: torch.dtype = torch.float32):
        if dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"ToTensor: dtype must be torch.uint8 or torch.float32, got {dtype}")
        self.dtype = dtype

    def __call__(self, image: Image, target: Optional[BoxList] = None,
                 generator: Optional[torch.Generator] = None):
        if not isinstance(image, torch.Tensor):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"ToTensor: expected an HxWx3 image, got shape {image.shape}")
            if image.dtype != np.uint8:
                raise ValueError(f"ToTensor: expected a uint8 image, got {image.dtype}")
            if self.dtype == torch.uint8:
                image = torch.from_numpy(image).permute(2, 0, 1)
            else:
                image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        return image, target

    def __repr__(self) -> str:
        return "ToTensor()" if self.dtype == torch.float32 else "ToTensor(dtype=torch.uint8)"


class Normalize:
    """Normalise a ``Tensor[3, H, W]`` BGR 0..255 image (uint8 or float) to float32.

    The rule is :func:`~maskrcnn_benchmark.layers.pixel_norm.normalize_pixels`'s (the model's
    :class:`~maskrcnn_benchmark.layers.pixel_norm.PixelNormalizer` gives the same values; the
    training / test loaders no longer normalise, test-time augmentation does, per view):
    ``to_bgr255=True`` (caffe/MSRA weights): keep BGR 0..255, then ``(x - mean) / std``.
    ``to_bgr255=False`` (torchvision weights): convert to RGB scaled to 0..1, then ``(x - mean) / std``.
    ``mean``/``std`` are per channel in the output's order and scale.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], to_bgr255: bool = True):
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"Normalize: mean and std need 3 values, got {mean} and {std}")
        if any(s == 0 for s in std):
            raise ValueError(f"Normalize: std must be non-zero, got {std}")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.to_bgr255 = bool(to_bgr255)
        self._stats: Dict[Tuple[torch.device, torch.dtype], Tuple[torch.Tensor, torch.Tensor]] = {}

    def stats(self, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)``, each Tensor[3, 1, 1] on ``like``'s device and dtype, built once per
        (device, dtype) from fills (no host-to-device copy; test-time augmentation normalises
        every view on the GPU)."""
        key = (like.device, like.dtype)
        if key not in self._stats:
            self._stats[key] = tuple(torch.cat([like.new_full((1, 1, 1), v) for v in values])
                                     for values in (self.mean, self.std))
        return self._stats[key]

    def __call__(self, image: torch.Tensor, target: Optional[BoxList] = None,
                 generator: Optional[torch.Generator] = None):
        if not isinstance(image, torch.Tensor):
            raise TypeError("Normalize expects a tensor; put ToTensor() before it")
        if not image.is_floating_point():
            image = image.float()
        mean, std = self.stats(image)
        return normalize_pixels(image, mean, std, self.to_bgr255), target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std}, to_bgr255={self.to_bgr255})"
