"""Small helpers: mkdir and saving the config (setting the config up: :mod:`maskrcnn_benchmark.config.loading`)."""
from __future__ import annotations

import errno
import os

from .comm import is_main_process
from .io import atomic_write_text


def mkdir(path: str) -> None:
    """``mkdir -p path`` (no error if it exists)."""
    try:
        os.makedirs(path)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise


def save_config(cfg, path: str) -> None:
    """Atomically write the (merged) yacs config ``cfg`` as yaml to ``path`` (rank 0 only)."""
    if is_main_process():
        atomic_write_text(path, cfg.dump())
