"""PyTorch-native deployment: ``torch.export`` of the inference graph and an AOTInductor package.

- :func:`export_program`: ``torch.export`` of :class:`~.graph.DenseDetectorGraph` (``dynamic``:
  priors from the feature-map sizes; batch-invariant: the ``image_sizes`` input masks each
  image's canvas) with a symbolic batch, height and width. Inputs ``images`` [B, 3, H, W] float32
  (H, W multiples of ``DATALOADER.SIZE_DIVISIBILITY``, at least :func:`min_side`) and
  ``image_sizes`` [B, 2] float32 (h, w of each image before padding); outputs ``scores``
  [B, N, C], ``boxes`` [B, N, 4], ``candidate_mask`` [B, N, C] (the ``--postprocess none``
  graph of the ONNX export).
- :func:`export_aoti`: that program compiled by AOTInductor into one ``.pt2`` file
  (``torch._inductor.aoti_compile_and_package``; needs a C++ compiler). It loads with
  ``torch._inductor.aoti_load_package(path)`` and torch alone: ``runner(images, image_sizes) ->
  [scores, boxes, candidate_mask]``; no training code is needed to run it.
- :class:`AotiDetector`: the package as a detector (``detector(ImageList) -> list of BoxList``,
  the PyTorch post-processor of the config), for the evaluation of ``tools/infer_onnx.py
  --runtime aoti``.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List

import numpy as np
import torch
from torch import nn

from .onnx_export import build_export_module
from .runtime import OnnxDetector, level_sizes_of

__all__ = ["min_side", "export_program", "export_aoti", "load_aoti", "AotiDetector"]

logger = logging.getLogger("maskrcnn_benchmark.export")

#: Largest multiple of the size divisibility the exported program takes per side (a bound
#: torch.export needs; 4096 px at divisibility 32).
MAX_BLOCKS = 128


def min_side(model: nn.Module) -> int:
    """Smallest H / W of the exported program: the first multiple of the size divisibility above
    the largest backbone stride, so that every level has at least 2 cells (torch.export
    specialises size-1 dimensions). Smaller batches are zero-padded up to it by the runtime,
    which the batch-invariant masks make invisible."""
    div = int(getattr(model, "size_divisibility", 0) or 0)
    if div <= 0:
        raise ValueError("torch.export needs DATALOADER.SIZE_DIVISIBILITY > 0 (the program's H and W "
                         "are multiples of it)")
    return (max(model.backbone.strides) // div + 1) * div


def export_program(model: nn.Module) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model``'s batch-invariant, dynamic-shape inference graph (see the
    module docstring), traced on a seeded batch of 2 at ``min_side x (min_side + div)``."""
    model.eval()
    side = min_side(model)
    div = int(model.size_divisibility)
    graph = build_export_module(model, (side, side + div), "none", batch_invariant=True,
                                dynamic=True)
    g = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    images = (torch.randn(2, 3, side, side + div, generator=g) * 50.0).to(device)
    sizes = torch.tensor([[side, side + div], [side - div // 2, side // 2]], dtype=torch.float32,
                         device=device)
    batch = torch.export.Dim("batch", min=1, max=1024)
    h = torch.export.Dim("h_blocks", min=side // div, max=MAX_BLOCKS)
    w = torch.export.Dim("w_blocks", min=side // div, max=MAX_BLOCKS)
    with torch.no_grad():
        return torch.export.export(graph, (images, sizes), dynamic_shapes={
            "images": {0: batch, 2: div * h, 3: div * w}, "image_sizes": {0: batch}})


def export_aoti(model: nn.Module, path: str) -> str:
    """Compile :func:`export_program` of ``model`` with AOTInductor into the package ``path``
    (``.pt2``, written atomically). Returns ``path``. Slow (C++ compilation: minutes)."""
    if not path.endswith(".pt2"):
        raise ValueError(f"{path}: an AOTInductor package must end in .pt2")
    program = export_program(model)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}.pt2")
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_aoti(path: str):
    """The runner of the package ``path`` (torch only), or a clear error for a missing / bad file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such AOTInductor package")
    try:
        return torch._inductor.aoti_load_package(path)
    except Exception as e:  # noqa: BLE001  (the loader raises several types)
        raise ValueError(f"{path}: not a loadable AOTInductor package (corrupt file, or compiled by "
                         f"another torch / platform?): {type(e).__name__}: {str(e).strip()[:300]}") from None


class AotiDetector(OnnxDetector):
    """An AOTInductor package of :func:`export_aoti` as a detector (see :class:`OnnxDetector`:
    the same batching and post-processing, from the same evaluation path).

    Args:
        runner: from :func:`load_aoti`; model: the detector of the config (strides, anchors,
            size divisibility, the post-processor and the normalisation of uint8 batches; its
            weights are not used).
    """

    def __init__(self, runner, model: nn.Module):
        nn.Module.__init__(self)
        self.runner = runner
        self.normalizer = getattr(model, "normalizer", None)
        self.batch = self.height = self.width = None
        self.takes_sizes, self.with_nms = True, False
        self.min_side = min_side(model)
        self._check_post_processing(model.rpn.post_processor,
                                    lambda hw: level_sizes_of(model, (int(hw[0]), int(hw[1]))))
        self._warned = False

    def _outputs(self, names: List[str], feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        with torch.no_grad():
            out = self.runner(torch.from_numpy(feeds["images"]), torch.from_numpy(feeds["image_sizes"]))
        by_name = dict(zip(("scores", "boxes", "candidate_mask"), out))
        return [by_name[n].numpy() for n in names]

    def num_classes(self) -> int:
        """C of the package: the last dimension of its scores on a small zero batch."""
        side = self.min_side
        out = self._outputs(["scores"], {"images": np.zeros((1, 3, side, side), np.float32),
                                         "image_sizes": np.array([[side, side]], np.float32)})
        return int(out[0].shape[-1])

