"""Environment summary printed at the start of training / testing."""
from __future__ import annotations

import os
import platform
import sys


def collect_env_info() -> str:
    """A short multi-line description of the software / hardware environment."""
    import numpy as np
    import torch

    rows = [
        ("Python", sys.version.replace("\n", " ")),
        ("Platform", platform.platform()),
        ("PyTorch", torch.__version__),
        ("PyTorch debug build", str(torch.version.debug)),
        ("NumPy", np.__version__),
        ("CUDA available", str(torch.cuda.is_available())),
        ("CPU threads", str(torch.get_num_threads())),
    ]
    if torch.cuda.is_available():
        rows.append(("CUDA", str(torch.version.cuda)))
        for i in range(torch.cuda.device_count()):
            rows.append((f"GPU {i}", torch.cuda.get_device_name(i)))
    try:
        import maskrcnn_benchmark._C  # noqa: F401
        rows.append(("maskrcnn_benchmark._C", "built"))
    except ImportError:
        rows.append(("maskrcnn_benchmark._C", "not built"))
    try:
        import cv2
        rows.append(("OpenCV", cv2.__version__))
    except ImportError:
        pass
    for var in ("CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "OMP_NUM_THREADS"):
        if var in os.environ:
            rows.append((var, os.environ[var]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
