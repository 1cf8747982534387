"""Inference without host syncs, checked on the CPU: every registered head's eval path, from the
input batch to the fixed-size detections on the device, runs under
``torch._subclasses.fake_tensor.FakeTensorMode`` (fp32 and autocast fp16 / bf16).

What the fake mode catches: every ``.item()`` / ``float()`` / ``bool()`` / ``.tolist()``
(DataDependentOutputException) and every ``nonzero`` / boolean-mask index / ``unique`` / other
data-dependent shape (DynamicOutputShapeException): the syncs of a GPU. The fake tensors live on
the CPU (on a CPU-only torch, Python indexing of fake *cuda* tensors fails), so copies between host
and device and device mixing are not seen here: the GPU simulator (``../shared/tools/gpu-sim``,
BENCHMARKS.md) checks those and counts the syncs of a whole evaluation.

The boundary: the NMS (:meth:`DensePostProcessor.nms_keep_mask`) is the one data-dependent step
of inference by design (on a GPU its kernel reads the number of kept boxes: the batch's one sync,
besides the final device-to-host copy). :func:`test_nms_is_the_only_data_dependent_step` shows
the fake mode stops exactly there; the sweep then replaces it by a fixed-shape stand-in with the
same output (a keep mask [N] bool), so everything before it (backbone, head, scores, decoding,
per-level top-k, clipping) and after it (top-N, padding) is checked. The final copy
(:meth:`DetectionBatch.to_boxlists`) ends the path and is not run here.
"""
import copy

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import (DataDependentOutputException, DynamicOutputShapeException,
                                           FakeTensorMode)

from maskrcnn_benchmark.config import cfg as default_cfg
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS, set_num_classes
from maskrcnn_benchmark.modeling.dense_heads.base import DenseCandidates, DetectionBatch
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.structures.image_list import ImageList

SMALL = "configs/atss/atss_R_18_FPN_small.yaml"
NUM_FOREGROUND = 4
IMAGE_SIZES = [(96, 128), (80, 112)]  # (h, w); padded batch 96 x 128
_MODELS = {}


def _model(head: str) -> nn.Module:
    """A small eval-mode CPU model of ``head`` (built once per head)."""
    if head not in _MODELS:
        cfg = default_cfg.clone()
        cfg.merge_from_file(SMALL)
        cfg.MODEL.HEAD = head
        cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 64
        for node in ("ATSS", "RETINANET", "FCOS"):  # short towers
            if node in cfg.MODEL and "NUM_CONVS" in cfg.MODEL[node]:
                cfg.MODEL[node].NUM_CONVS = 1
        set_num_classes(cfg, NUM_FOREGROUND + 1)
        torch.manual_seed(0)
        _MODELS[head] = build_detection_model(cfg).eval()
    return _MODELS[head]


def keep_all(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Fixed-shape stand-in of :meth:`DensePostProcessor.nms_keep_mask`: keeps every box."""
    return torch.ones_like(scores, dtype=torch.bool)


def _fake_batch() -> ImageList:
    return ImageList(torch.empty(len(IMAGE_SIZES), 3, 96, 128), IMAGE_SIZES)


@pytest.mark.parametrize("amp", [None, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("head", sorted(DENSE_HEADS.keys()))
def test_inference_up_to_the_host_copy_has_no_sync(head, amp, monkeypatch):
    model = copy.deepcopy(_model(head))  # its prior cache will hold fake tensors
    model.inference_amp = amp
    with FakeTensorMode(allow_non_fake_inputs=True):
        monkeypatch.setattr(model.rpn.post_processor, "nms_keep_mask", keep_all)
        candidates = model.candidates(_fake_batch())
        dets = model.detect(candidates)
    assert isinstance(candidates, DenseCandidates) and isinstance(dets, DetectionBatch)
    k = model.rpn.post_processor.detections_per_img
    assert dets.boxes.shape == (2, k, 4) and dets.scores.shape == (2, k) and dets.labels.shape == (2, k)
    assert dets.scores.dtype == torch.float32 and dets.boxes.dtype == torch.float32
    assert dets.labels.dtype == torch.int64 and candidates.scores.dtype == torch.float32
    assert candidates.num_classes == NUM_FOREGROUND and dets.image_sizes == IMAGE_SIZES


def test_nms_is_the_only_data_dependent_step():
    """Without the stand-in the fake mode stops at the NMS op, nowhere before it."""
    model = copy.deepcopy(_model("ATSS"))
    with FakeTensorMode(allow_non_fake_inputs=True):
        candidates = model.candidates(_fake_batch())
        post = model.rpn.post_processor
        calls = []
        real = post.nms_keep_mask
        post.nms_keep_mask = lambda *a: calls.append(a) or real(*a)
        with pytest.raises(DynamicOutputShapeException):
            model.detect(candidates)
    assert len(calls) == 1 and calls[0][0].shape == (2 * candidates.scores.shape[1], 4)


@pytest.mark.parametrize("sync", ["item", "tolist", "bool", "nonzero", "mask_index", "unique"])
def test_the_fake_mode_raises_on_each_kind_of_sync(sync):
    """The guard of the sweep: each kind of sync raises on fake cuda tensors."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(10)
        op = {"item": lambda: x.sum().item(), "tolist": lambda: x.tolist(),
              "bool": lambda: bool((x > 0).any()), "nonzero": lambda: x.nonzero(),
              "mask_index": lambda: x[x > 0], "unique": lambda: x.unique()}[sync]
        with pytest.raises((DataDependentOutputException, DynamicOutputShapeException)):
            op()
