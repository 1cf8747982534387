"""Mixed-precision settings: the one parser of ``SOLVER.AMP`` / ``TEST.AMP`` values."""
from __future__ import annotations

import warnings
from typing import Optional

import torch

__all__ = ["AMP_DTYPES", "resolve_amp"]

#: Config value -> autocast dtype (None: full precision).
AMP_DTYPES = {"": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_amp(amp: str, device: torch.device, key: str = "SOLVER.AMP") -> Optional[torch.dtype]:
    """An AMP config value ("" / "fp16" / "bf16") -> autocast dtype (None: full precision).

    fp16 autocast is a GPU feature; on any other device "fp16" falls back to bf16 with a warning.
    ``key`` names the config key in the messages.
    """
    value = str(amp).lower()
    if value not in AMP_DTYPES:
        raise ValueError(f"{key} must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    dtype = AMP_DTYPES[value]
    device = torch.device(device)
    if dtype is torch.float16 and device.type != "cuda":
        warnings.warn(f"{key} 'fp16' is only supported on CUDA; using bf16 autocast on {device.type}")
        dtype = torch.bfloat16
    return dtype
