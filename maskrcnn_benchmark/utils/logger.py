"""Logging set-up: console on rank 0 and ``<save_dir>/log.txt`` (appended, so a resumed run keeps its history)."""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def setup_logger(name: str, save_dir: Optional[str], distributed_rank: int, filename: str = "log.txt",
                 stream=None) -> logging.Logger:
    """Configure and return the logger ``name``.

    Rank 0 logs INFO and above to ``stream`` (default ``sys.stdout``) and everything (DEBUG) to
    ``save_dir/filename`` when ``save_dir`` is given; other ranks get no handlers (silent).
    Calling it again replaces the handlers it installed before (safe for in-process reruns). Records
    still propagate to the root logger (so pytest's ``caplog`` sees them); configure no root handler
    to avoid printing twice.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):
        if getattr(handler, "_mb_handler", False):
            logger.removeHandler(handler)
            handler.close()
    if distributed_rank > 0:
        return logger
    formatter = logging.Formatter(_FORMAT)
    console = logging.StreamHandler(stream if stream is not None else sys.stdout)
    console.setLevel(logging.INFO)
    console.setFormatter(formatter)
    console._mb_handler = True
    logger.addHandler(console)
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
        fh = logging.FileHandler(os.path.join(save_dir, filename), mode="a", encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(formatter)
        fh._mb_handler = True
        logger.addHandler(fh)
    return logger
