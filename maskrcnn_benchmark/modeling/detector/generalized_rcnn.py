"""Backbone (+ FPN) followed by a dense head: the one meta-architecture of the toolkit."""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from maskrcnn_benchmark.layers.padding_mask import PaddingMask
from maskrcnn_benchmark.layers.pixel_norm import PixelNormalizer
from maskrcnn_benchmark.modeling.dense_heads.base import DenseCandidates, DetectionBatch
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import ImageList, to_image_list

__all__ = ["GeneralizedRCNN"]


class GeneralizedRCNN(nn.Module):
    """``backbone`` then a dense head.

    The head is stored as ``rpn`` (as in the original maskrcnn-benchmark / ATSS code, so their
    checkpoints' ``rpn.head.*`` names load); ``dense_head`` is an alias.

    Args:
        backbone: module with ``forward(Tensor[B, 3, H, W]) -> list of Tensor[B, C, H_l, W_l]``.
        dense_head: module with ``forward(images, features, targets) -> (detections, losses)``.
        size_divisibility: padding multiple used when a list of images is given.
        inference_amp: autocast dtype of eval-mode forwards (``torch.float16`` / ``torch.bfloat16``;
            None: float32). It covers the backbone and the head's convolutions; the head turns
            scores and boxes to float32 before post-processing (:meth:`DenseHead.forward`).
            Training precision is the trainer's (``SOLVER.AMP``).
        channels_last: run the model in the channels-last (NHWC) memory format: the parameters
            are converted here and the input batch in :meth:`forward` (``MODEL.CHANNELS_LAST``;
            oneDNN convolutions then need no layout reorders; results agree with the default
            layout within float32 rounding, not bit for bit).
        batch_invariant: ``(train, eval)``: in that mode each image of a mixed-size batch sees
            only its own canvas (:class:`~maskrcnn_benchmark.layers.padding_mask.PaddingMask`;
            ``SOLVER.BATCH_INVARIANT``, ``TEST.BATCH_INVARIANT``), so its detections equal its
            batch-1 detections. Needs a backbone whose ``forward(x, masks)`` takes them
            (:class:`~maskrcnn_benchmark.modeling.backbone.backbone.Backbone`) and ``strides``.
        pixel_mean, pixel_std, to_bgr255: the normalisation of uint8 input (``INPUT.PIXEL_MEAN``,
            ``INPUT.PIXEL_STD``, ``INPUT.TO_BGR255``; :class:`PixelNormalizer`, ``self.normalizer``).

    Input rule (:meth:`preprocess`): a **uint8** batch (what the data loaders and the Predictor
    give: BGR 0..255, zero-padded) is normalised here, on the model's device, and set to zero
    outside each image's ``image_sizes`` (the values the loaders used to produce, bit for bit); a
    **floating** batch is taken as already normalised and used as it is (user code, tests,
    test-time augmentation, exports); any other dtype is an error.
    """

    def __init__(self, backbone: nn.Module, dense_head: nn.Module, size_divisibility: int = 0,
                 inference_amp: Optional[torch.dtype] = None, channels_last: bool = False,
                 batch_invariant: Tuple[bool, bool] = (False, True),
                 pixel_mean: Sequence[float] = (102.9801, 115.9465, 122.7717),
                 pixel_std: Sequence[float] = (1.0, 1.0, 1.0), to_bgr255: bool = True):
        super().__init__()
        if inference_amp not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"GeneralizedRCNN: inference_amp must be None, torch.float16 or "
                             f"torch.bfloat16, got {inference_amp}")
        self.normalizer = PixelNormalizer(pixel_mean, pixel_std, to_bgr255)
        self.backbone = backbone
        self.rpn = dense_head
        self.size_divisibility = int(size_divisibility)
        self.inference_amp = inference_amp
        self.batch_invariant = tuple(bool(v) for v in batch_invariant)
        self.channels_last = False
        if channels_last:
            self.set_channels_last(True)

    def set_channels_last(self, enabled: bool) -> "GeneralizedRCNN":
        """Switch the parameters (and from now on the input batch) to the channels-last (True) or
        the default contiguous (False) memory format, in place. Returns ``self``."""
        self.channels_last = bool(enabled)
        self.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return self

    @property
    def dense_head(self) -> nn.Module:
        return self.rpn

    def inference_autocast(self, device: torch.device):
        """The autocast context of an eval-mode forward on ``device`` (a disabled one in training
        or without ``inference_amp``, so an enclosing training autocast stays in effect)."""
        if self.training or self.inference_amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.inference_amp)

    def padding_mask(self, images: ImageList) -> Optional[PaddingMask]:
        """The batch's :class:`PaddingMask` when this mode is batch-invariant and some image does
        not fill the padded tensor (host-known sizes, no device sync); else None."""
        if not self.batch_invariant[0 if self.training else 1]:
            return None
        return PaddingMask.for_batch(images.image_sizes, images.tensors.shape[-2:],
                                     self.size_divisibility, images.tensors.device)

    def preprocess(self, images: Union[ImageList, Sequence[torch.Tensor], torch.Tensor]) -> ImageList:
        """``images`` (as :meth:`forward` takes them) as a normalised ImageList in the model's
        memory format: a uint8 batch normalised by :attr:`normalizer` (zero outside each image),
        a floating one unchanged (taken as already normalised)."""
        images = to_image_list(images, self.size_divisibility)
        x = images.tensors
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if x.dtype == torch.uint8:
            x = self.normalizer(x, images.image_sizes, memory_format=fmt)
        elif not x.is_floating_point():
            raise ValueError(f"GeneralizedRCNN: images must be uint8 (BGR 0..255, normalised by the "
                             f"model) or floating (already normalised), got {x.dtype}")
        elif self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return images if x is images.tensors else ImageList(x, images.image_sizes)

    def features(self, x: torch.Tensor, masks: Optional[PaddingMask] = None
                 ) -> Tuple[List[torch.Tensor], Optional[List[torch.Tensor]]]:
        """Backbone features of the batch x [B, 3, H, W] (per level [B, C, H_l, W_l]) and, with
        ``masks``, each level's canvas mask [B, 1, H_l, W_l] (else None)."""
        if masks is None:
            return list(self.backbone(x)), None
        features = list(self.backbone(x, masks))
        return features, masks.levels(self.backbone.strides, features)

    def forward(self, images: Union[ImageList, Sequence[torch.Tensor], torch.Tensor],
                targets: Optional[List[BoxList]] = None) -> Union[Dict[str, torch.Tensor], List[BoxList]]:
        """
        Args:
            images: an ImageList, or a list of Tensor[3, H_i, W_i] (padded here to a multiple of
                ``size_divisibility``), or a Tensor[B, 3, H, W]; uint8 (normalised here) or
                floating (already normalised), see the class docstring.
            targets: per image BoxList (image coordinates) with a ``labels`` field (int64, 1..C);
                required in training mode.
        Returns:
            training: dict of scalar losses; eval: per image BoxList on the CPU (fields
            ``scores``, ``labels``) in the coordinates of the input image, sorted by decreasing
            score (one NMS call and one device-to-host copy for the batch).
        """
        if self.training and targets is None:
            raise ValueError("GeneralizedRCNN: targets are required in training mode "
                             "(call model.eval() for inference)")
        images = self.preprocess(images)
        if targets is not None:
            targets = [t.to(images.tensors.device) for t in targets]
        with self.inference_autocast(images.tensors.device):
            features, level_masks = self._features(images)
            targets = targets if self.training else None
            detections, losses = (self.rpn(images, features, targets) if level_masks is None
                                  else self.rpn(images, features, targets, masks=level_masks))
        if self.training:
            return losses
        return detections

    def _features(self, images: ImageList) -> Tuple[List[torch.Tensor], Optional[List[torch.Tensor]]]:
        """The backbone's per-level features of the (preprocessed) batch and the
        levels' canvas masks (None when the batch needs none, see :meth:`padding_mask`)."""
        return self.features(images.tensors, self.padding_mask(images))

    @torch.no_grad()
    def candidates(self, images: Union[ImageList, Sequence[torch.Tensor], torch.Tensor]) -> DenseCandidates:
        """Eval mode, first half of :meth:`forward`: the head's pre-NMS candidates of the batch
        (:meth:`DenseHead.candidates`; fixed shapes, on the device, no host sync). ``images`` as in
        :meth:`forward`. :meth:`detect` finishes them; several batches (the views of test-time
        augmentation) can be finished together with :meth:`DenseCandidates.cat`."""
        images = self.preprocess(images)
        with self.inference_autocast(images.tensors.device):
            features, level_masks = self._features(images)
            return self.rpn.candidates(images, features, level_masks)

    def detect(self, candidates: DenseCandidates) -> DetectionBatch:
        """Eval mode, second half: NMS and top-N of every image (:meth:`DenseHead.detect`, one NMS
        call); :meth:`DetectionBatch.to_boxlists` copies them to the host."""
        return self.rpn.detect(candidates)
