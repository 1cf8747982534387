"""Mixed-precision settings: the one parser of ``SOLVER.AMP`` / ``TEST.AMP`` values."""
from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch

__all__ = ["AMP_DTYPES", "resolve_amp", "cpu_has_native_bf16"]

#: Config value -> autocast dtype (None: full precision).
AMP_DTYPES = {"": None, "fp16": torch.float16, "bf16": torch.bfloat16}


#: /proc/cpuinfo flags of CPUs that compute bf16 natively (AVX512-BF16 dot products, AMX tiles).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> Optional[bool]:
    """Whether this CPU has native bf16 arithmetic (any of :data:`NATIVE_BF16_FLAGS` in the ``flags``
    line of ``cpuinfo``); None where that cannot be read (not Linux). Without it, oneDNN emulates
    bf16 with float32 arithmetic plus conversions, which is slower than plain float32."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(flag in flags for flag in NATIVE_BF16_FLAGS)
    except OSError:
        return None
    return None


def resolve_amp(amp: str, device: torch.device, key: str = "SOLVER.AMP") -> Optional[torch.dtype]:
    """An AMP config value ("" / "fp16" / "bf16") -> autocast dtype (None: full precision).

    fp16 autocast is a GPU feature; on any other device "fp16" falls back to bf16 with a warning.
    bf16 on a CPU without native bf16 (:func:`cpu_has_native_bf16` False) warns that it will be
    slower than float32 (it still runs: the results are valid, only the speed suffers).
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
    if dtype is torch.bfloat16 and device.type == "cpu" and cpu_has_native_bf16() is False:
        warnings.warn(f"{key} bf16 on a CPU without native bf16 (none of the cpuinfo flags "
                      f"{', '.join(NATIVE_BF16_FLAGS)}): bf16 is emulated and usually slower than float32 "
                      f"here; leave {key} empty for float32")
    return dtype
