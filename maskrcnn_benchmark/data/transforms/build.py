"""Build the transform pipeline from the config (the only place that reads ``cfg.INPUT``)."""
from __future__ import annotations

import logging

import torch

from . import transforms as T

logger = logging.getLogger(__name__)


def build_transforms(cfg, is_train: bool = True) -> T.Compose:
    """Resize -> (flip when training) -> ToTensor(uint8), per ``cfg.INPUT.*``.

    The images stay uint8 BGR 0..255 ``Tensor[3, H, W]``: the model normalises them on its device
    with ``INPUT.PIXEL_MEAN`` / ``PIXEL_STD`` / ``TO_BGR255``
    (:class:`~maskrcnn_benchmark.layers.pixel_norm.PixelNormalizer`), as detectron2 does.

    Training draws the shorter side from ``INPUT.MIN_SIZE_RANGE_TRAIN`` (inclusive range) when
    both ends are > 0, else from ``INPUT.MIN_SIZE_TRAIN``.
    """
    if is_train:
        lo, hi = (list(cfg.INPUT.MIN_SIZE_RANGE_TRAIN) + [-1, -1])[:2]
        if lo > 0 and hi > 0:
            if hi < lo:
                raise ValueError(f"INPUT.MIN_SIZE_RANGE_TRAIN must be (lo, hi) with lo <= hi, got {(lo, hi)}")
            min_size = tuple(range(int(lo), int(hi) + 1))
        else:
            min_size = cfg.INPUT.MIN_SIZE_TRAIN
        max_size = cfg.INPUT.MAX_SIZE_TRAIN
        flip_prob = cfg.INPUT.FLIP_PROB_TRAIN
    else:
        min_size = cfg.INPUT.MIN_SIZE_TEST
        max_size = cfg.INPUT.MAX_SIZE_TEST
        flip_prob = 0.0
    if any(getattr(cfg.INPUT, k, 0.0) for k in ("BRIGHTNESS", "CONTRAST", "SATURATION", "HUE")):
        logger.warning("INPUT.BRIGHTNESS/CONTRAST/SATURATION/HUE colour jitter is not implemented; ignored")
    steps = [T.Resize(min_size, max_size)]
    if flip_prob > 0:
        steps.append(T.RandomHorizontalFlip(flip_prob))
    steps.append(T.ToTensor(torch.uint8))
    return T.Compose(steps)
