"""Detector meta-architectures: ``build_detection_model(cfg)``."""
from __future__ import annotations

import logging
from typing import Dict

import torch

from maskrcnn_benchmark.modeling.backbone import build_backbone
from maskrcnn_benchmark.modeling.dense_heads import build_dense_head
from maskrcnn_benchmark.utils.amp import resolve_amp
from maskrcnn_benchmark.utils.cpu_speedups import resolve_cpu_speedup
from maskrcnn_benchmark.utils.registry import Registry

from .generalized_rcnn import GeneralizedRCNN

__all__ = ["META_ARCHITECTURES", "GeneralizedRCNN", "build_detection_model", "check_supported",
           "compile_model", "check_device", "prepare_for_inference", "resolve_speedups", "BUILD_PURPOSES"]

META_ARCHITECTURES = Registry("META_ARCHITECTURES")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # TEST.MEMORY_FORMAT
#: ``build_detection_model(cfg, purpose)``: what the model is for (decides which AMP keys apply and
#: whether MODEL.CHANNELS_LAST / MODEL.WINOGRAD "auto" may turn on; utils/cpu_speedups.py).
BUILD_PURPOSES = ("train", "test", "export")
logger = logging.getLogger(__name__)


def check_supported(cfg) -> None:
    """Rejects the original codebase's features this toolkit does not implement."""
    unsupported = [("MODEL.MASK_ON", cfg.MODEL.MASK_ON), ("MODEL.KEYPOINT_ON", cfg.MODEL.KEYPOINT_ON)]
    on = [name for name, value in unsupported if value]
    if on:
        raise ValueError(f"unsupported option(s) {on}: masks and keypoints are not implemented "
                         "(test-time augmentation runs around the detector: engine/bbox_aug.py); set them to False")


@META_ARCHITECTURES.register("GeneralizedRCNN")
def build_generalized_rcnn(cfg) -> GeneralizedRCNN:
    backbone = build_backbone(cfg)
    head = build_dense_head(cfg, backbone.out_channels)
    amp_dtype = resolve_amp(cfg.TEST.AMP, torch.device(cfg.MODEL.DEVICE), key="TEST.AMP")
    return GeneralizedRCNN(backbone, head, size_divisibility=cfg.DATALOADER.SIZE_DIVISIBILITY,
                           inference_amp=amp_dtype,
                           batch_invariant=(cfg.SOLVER.BATCH_INVARIANT, cfg.TEST.BATCH_INVARIANT),
                           pixel_mean=cfg.INPUT.PIXEL_MEAN, pixel_std=cfg.INPUT.PIXEL_STD,
                           to_bgr255=cfg.INPUT.TO_BGR255)


def compile_model(model: GeneralizedRCNN, **compile_kwargs) -> GeneralizedRCNN:
    """``torch.compile`` the backbone and the conv head of ``model`` in place (``MODEL.COMPILE``).

    Uses ``nn.Module.compile``, so parameter names and checkpoints are unchanged; the compiled
    graphs are built at the first forward of each input shape / mode. Assignment, losses and
    post-processing (data-dependent shapes, compiled ops) stay eager. Returns ``model``.
    """
    model.backbone.compile(**compile_kwargs)
    model.rpn.head.compile(**compile_kwargs)
    return model


def prepare_for_inference(model: GeneralizedRCNN, cfg, logger=None) -> GeneralizedRCNN:
    """Turn a loaded model into an inference-only one, in place: eval mode, the memory format of
    ``TEST.MEMORY_FORMAT`` ("auto": channels-last on the CPU) and, with
    ``TEST.FOLD_FROZEN_BN``, every FrozenBatchNorm2d folded into its conv
    (:func:`~maskrcnn_benchmark.layers.fold_frozen_batchnorm`). Its state dict then differs from the
    checkpoint's, so call this after loading the weights and never on a model that is trained or saved
    afterwards. Returns ``model``."""
    from maskrcnn_benchmark.layers import fold_frozen_batchnorm

    model.eval()
    fmt = cfg.TEST.MEMORY_FORMAT
    if fmt not in MEMORY_FORMATS:
        raise ValueError(f"TEST.MEMORY_FORMAT must be one of {MEMORY_FORMATS}, got {fmt!r}")
    on_cpu = next(model.parameters()).device.type == "cpu"
    channels_last = fmt == "channels_last" or (fmt == "auto" and (on_cpu or model.channels_last))
    if channels_last != model.channels_last:
        model.set_channels_last(channels_last)
        if logger is not None:
            logger.info("TEST.MEMORY_FORMAT %s: inference in the %s memory format", fmt,
                        "channels-last" if channels_last else "default contiguous")
    if cfg.TEST.FOLD_FROZEN_BN:
        num = fold_frozen_batchnorm(model)
        if logger is not None and num:
            logger.info("TEST.FOLD_FROZEN_BN: %d FrozenBatchNorm2d layer(s) folded into their convs", num)
    return model


def check_device(device: str) -> torch.device:
    """``torch.device(MODEL.DEVICE)``, or a ValueError naming the key when that device cannot be used
    here (e.g. the R-50 configs' default "cuda" on a machine without CUDA)."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"MODEL.DEVICE {device!r} is not a device name ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "this torch has no CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise ValueError(f"MODEL.DEVICE is {device!r} but {why} (torch {torch.__version__}); add "
                         f"'MODEL.DEVICE cpu' to the command line (or the config) to run on the CPU")
    return dev


def resolve_speedups(cfg, purpose: str = "train") -> Dict[str, bool]:
    """``{"MODEL.CHANNELS_LAST": on, "MODEL.WINOGRAD": on}`` for a model of ``cfg`` built for
    ``purpose`` (:data:`BUILD_PURPOSES`), decided by
    :func:`~maskrcnn_benchmark.utils.cpu_speedups.resolve_cpu_speedup` from MODEL.DEVICE, the AMP
    keys that apply (training: SOLVER.AMP and TEST.AMP, for the evaluation during training; test:
    TEST.AMP), MODEL.COMPILE / MODEL.COMPILE_TRAIN_STEP and ``purpose == "export"``. Logs one line
    per key: the choice and why."""
    if purpose not in BUILD_PURPOSES:
        raise ValueError(f"build_detection_model: purpose must be one of {BUILD_PURPOSES}, got {purpose!r}")
    amp_keys = (cfg.SOLVER.AMP, cfg.TEST.AMP) if purpose == "train" else (cfg.TEST.AMP,)
    context = dict(device_type=torch.device(cfg.MODEL.DEVICE).type, dtype=torch.float32,
                   autocast=any(str(v) for v in amp_keys),
                   compiled=bool(cfg.MODEL.COMPILE or cfg.MODEL.COMPILE_TRAIN_STEP),
                   export=purpose == "export")
    out = {}
    for key, value in (("MODEL.CHANNELS_LAST", cfg.MODEL.CHANNELS_LAST), ("MODEL.WINOGRAD", cfg.MODEL.WINOGRAD)):
        out[key], why = resolve_cpu_speedup(value, key, **context)
        logger.info(why)
    return out


def build_detection_model(cfg, purpose: str = "train") -> GeneralizedRCNN:
    """The model of ``cfg.MODEL.META_ARCHITECTURE`` on ``cfg.MODEL.DEVICE`` (train mode).

    ``purpose`` ("train", "test" or "export", see :func:`resolve_speedups`) decides with the config
    whether the CPU speed-ups are on: ``MODEL.CHANNELS_LAST`` (parameters and input batch
    channels-last, ``GeneralizedRCNN.set_channels_last``) and ``MODEL.WINOGRAD`` (its 3x3 /
    stride-1 convs run as Winograd F(4x4, 3x3) on the CPU,
    :func:`~maskrcnn_benchmark.layers.convert_to_winograd`). With ``MODEL.COMPILE`` its backbone
    and head are compiled (:func:`compile_model`), with ``MODEL.COMPILE_TRAIN_STEP`` the dense
    head's whole training step (``DenseHead.compile_step``)."""
    check_supported(cfg)
    device = check_device(cfg.MODEL.DEVICE)
    speedups = resolve_speedups(cfg, purpose)
    model = META_ARCHITECTURES[cfg.MODEL.META_ARCHITECTURE](cfg)
    model = model.to(device)
    if speedups["MODEL.CHANNELS_LAST"]:
        model.set_channels_last(True)
    if speedups["MODEL.WINOGRAD"]:
        from maskrcnn_benchmark.layers import convert_to_winograd

        convert_to_winograd(model)
    if cfg.MODEL.COMPILE:
        compile_model(model)
    if cfg.MODEL.COMPILE_TRAIN_STEP:
        model.rpn.compile_step()
    return model
