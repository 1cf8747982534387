"""``MODEL.CHANNELS_LAST`` and ``MODEL.WINOGRAD``: the CPU speed-ups, and when "auto" turns them on.

Both keys take ``"auto"`` (the default), ``True`` or ``False`` (from a yaml or the command line also the
strings ``"True"`` / ``"False"``, any case). True / False force the speed-up on / off. "auto" turns
it on where it was measured to pay (BENCHMARKS.md section 9, ``compare_torchvision.py``: with both,
inference 1.25-1.58x -> 1.62-2.02x torchvision's, the training step 1.04-1.24x -> 1.46-1.90x):

- the model runs on the CPU, in float32 (oneDNN convolutions; Winograd F(4x4, 3x3) is a CPU
  float32 kernel, ``layers/winograd.py``, which further keeps only the layers of at least
  ``MIN_CHANNELS`` channels on maps of at least ``MIN_TILES`` tiles);
- no autocast (``SOLVER.AMP`` / ``TEST.AMP``): bf16 convolutions were not measured with these keys,
  and Winograd does not run under autocast anyway;
- no ``torch.compile`` (``MODEL.COMPILE`` / ``MODEL.COMPILE_TRAIN_STEP``): Inductor chooses its own
  layouts and kernels (Winograd does not run inside a compiled graph);
- not for an export (ONNX, ``torch.export`` / AOTInductor): the graph never holds Winograd
  convolutions and takes its layout from ``TEST.MEMORY_FORMAT``, so the eager model that the
  export is checked against stays the direct-convolution model.

On a GPU "auto" is off (not measured there; cuDNN picks its own algorithms). Neither key changes
the parameters or their names: checkpoints load into a model built with any setting.
:func:`resolve_cpu_speedup` is the one place where the rule is decided; the model builder
(``build_detection_model``) reads the config and calls it. The values are parsed where the
config reads them (:func:`maskrcnn_benchmark.config.node.parse_auto_flag`).
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

from maskrcnn_benchmark.config.node import AUTO, parse_auto_flag

__all__ = ["resolve_cpu_speedup"]

def resolve_cpu_speedup(setting, key: str, device_type: str, dtype: torch.dtype = torch.float32,
                        autocast: bool = False, compiled: bool = False,
                        export: bool = False) -> Tuple[bool, str]:
    """Whether the speed-up of ``key`` is on, and why (one sentence for the log).

    Args:
        setting: the config value ("auto", True, False, or their strings; see :func:`parse_auto_flag`).
        key: the config key, e.g. ``"MODEL.WINOGRAD"`` (named in the reason and in errors).
        device_type: the model's device type (``torch.device(MODEL.DEVICE).type``: "cpu", "cuda"...).
        dtype: the parameters' dtype.
        autocast: mixed precision is on for this model (``SOLVER.AMP`` or ``TEST.AMP`` set).
        compiled: part of the model runs under ``torch.compile`` (``MODEL.COMPILE``,
            ``MODEL.COMPILE_TRAIN_STEP``).
        export: the model is built to be exported (ONNX, ``torch.export``, AOTInductor).
    Returns:
        ``(on, reason)``. A forced True / False is returned as is, whatever the other arguments.
    Raises:
        ValueError naming ``key`` for a value other than "auto", True or False.
    """
    value = parse_auto_flag(setting, key)
    if value is not AUTO:
        return value, f"{key} {value}: {'on' if value else 'off'} (set in the config)"
    why_off = None
    if device_type != "cpu":
        why_off = f"the model runs on {device_type}, and the gain was measured on the CPU only"
    elif dtype != torch.float32:
        why_off = f"the parameters are {dtype}, and the gain was measured in float32 only"
    elif autocast:
        why_off = "mixed precision is on (SOLVER.AMP / TEST.AMP), and the gain was measured in float32 only"
    elif compiled:
        why_off = "torch.compile is on (MODEL.COMPILE / MODEL.COMPILE_TRAIN_STEP) and chooses its own kernels"
    elif export:
        why_off = "the model is built for an export, whose graph is checked against the direct-convolution model"
    if why_off is not None:
        return False, f"{key} auto: off, {why_off}"
    return True, (f"{key} auto: on, the model runs eager on the CPU in float32, where the speed-up was "
                  f"measured (BENCHMARKS.md section 9); set {key} False for bit-identical results")
