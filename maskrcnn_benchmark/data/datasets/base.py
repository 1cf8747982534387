"""What every detection dataset shares: checked image decoding and the seeded, corrupt-image
tolerant ``__getitem__`` (:class:`DetectionDataset`). COCO and Pascal VOC subclass it."""
from __future__ import annotations

import logging
from typing import Callable, List, Optional, Tuple, Union

import cv2
import numpy as np
import torch

from maskrcnn_benchmark.data.transforms.transforms import apply_transforms
from maskrcnn_benchmark.structures.bounding_box import BoxList

__all__ = ["CorruptImageError", "DetectionDataset", "decode_image_file"]

logger = logging.getLogger(__name__)


class CorruptImageError(OSError):
    """An image file that cannot be decoded completely (not an image, truncated, ...)."""


def _truncation_problem(data: bytes) -> Optional[str]:
    """Why an encoded JPEG / PNG is incomplete (None if it looks complete or is another format).

    libjpeg decodes a truncated JPEG with grey filler and only prints a warning, so the end
    markers are checked here: a JPEG must end with its EOI marker ``FF D9`` (trailing NUL / white
    space allowed), a PNG with its ``IEND`` chunk.
    """
    if data[:2] == b"\xff\xd8":
        if not data.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
            return "truncated JPEG (no end-of-image marker)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-16:]:
            return "truncated PNG (no IEND chunk)"
    return None


def decode_image_file(path: str) -> np.ndarray:
    """``np.ndarray[H, W, 3]`` uint8 BGR of the image file ``path``.

    Raises:
        CorruptImageError: empty, undecodable, or a truncated JPEG / PNG (the message says which).
    """
    with open(path, "rb") as f:
        data = f.read()
    problem = "empty file" if not data else _truncation_problem(data)
    image = None
    if problem is None:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            problem = "corrupt or not an image"
    if problem is not None:
        raise CorruptImageError(f"cannot decode image file {path}: {problem}")
    return image


class DetectionDataset(torch.utils.data.Dataset):
    """Base of the detection datasets: a subclass provides ``__len__``, ``load_image(i)`` (raising
    :class:`CorruptImageError` for an undecodable file), ``get_groundtruth(i)`` and ``get_img_info(i)``.

    Args:
        transforms: ``callable(image np.ndarray[H,W,3] uint8 BGR, target BoxList) -> (image, target)``;
            ``None`` returns the raw BGR uint8 array.
        skip_corrupt_images: an image that cannot be decoded completely is replaced by the next
            readable one (index + 1, ...) with a warning naming it and counting the skips of this
            process (DATALOADER.SKIP_CORRUPT_IMAGES); False (default): raise ``CorruptImageError``.
    """

    def __init__(self, transforms: Optional[Callable] = None, skip_corrupt_images: bool = False):
        self.transforms = transforms
        self.skip_corrupt_images = bool(skip_corrupt_images)
        self.num_skipped_images = 0  # corrupt images skipped by this process

    def load_image(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def get_groundtruth(self, index: int) -> BoxList:
        raise NotImplementedError

    def __getitem__(self, key: Union[int, Tuple[int, int]]):
        """``dataset[i]`` or ``dataset[(i, seed)]`` (what the training sampler yields,
        :class:`~maskrcnn_benchmark.data.samplers.IterationBasedBatchSampler`) -> ``(image, target, i)``.
        With a seed every random transform draws from a generator seeded with it, so the sample
        depends only on ``(i, seed)``, not on the loader worker that made it."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        for attempt in range(len(self)):
            try:
                image = self.load_image(index)
                break
            except CorruptImageError as e:
                if not self.skip_corrupt_images or attempt == len(self) - 1:
                    raise
                self.num_skipped_images += 1
                logger.warning("skipping corrupt image (DATALOADER.SKIP_CORRUPT_IMAGES): %s; %d image(s) "
                               "skipped so far by this process", e, self.num_skipped_images)
                index = (index + 1) % len(self)
        target = self.get_groundtruth(index)
        if self.transforms is not None:
            image, target = apply_transforms(self.transforms, image, target, seed)
        return image, target, index

    def aspect_ratios(self) -> List[float]:
        """Height / width of every image (from the annotations, no image reading)."""
        infos = [self.get_img_info(i) for i in range(len(self))]
        return [info["height"] / info["width"] for info in infos]
