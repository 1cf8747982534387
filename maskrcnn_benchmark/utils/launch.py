"""Distributed set-up from the environment: torchrun, ``python -m torch.distributed.launch``, multi-node.

``torchrun`` sets ``LOCAL_RANK``, ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; the legacy
launcher also passes ``--local-rank=N`` (older versions ``--local_rank N``). Both are accepted.
"""
from __future__ import annotations

import argparse
import datetime
import os
from typing import Optional, Tuple

import torch
import torch.distributed as dist

from .comm import set_timeout, synchronize

DEFAULT_TIMEOUT_S = 600.0  # the default of the DIST_TIMEOUT_S config key


def add_distributed_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--local-rank`` / ``--local_rank`` (same destination) to a command-line parser."""
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                        help="local process rank (set by the legacy launcher; torchrun uses LOCAL_RANK)")
    return parser


def get_local_rank(arg_local_rank: Optional[int] = None) -> int:
    """The local rank: the command-line value if given, else ``$LOCAL_RANK``, else 0."""
    if arg_local_rank is not None:
        return int(arg_local_rank)
    return int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(local_rank: Optional[int] = None, device: str = "cpu",
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> Tuple[bool, int]:
    """Initialise ``torch.distributed`` from the environment when ``WORLD_SIZE`` > 1.

    Backend: NCCL for ``device`` "cuda" (after ``torch.cuda.set_device(local_rank)``), gloo for "cpu".
    Rendezvous: ``init_process_group("env://")`` (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``;
    ``RANK`` defaults to ``local_rank`` for single-node launchers that do not set it).
    ``timeout_s`` (DIST_TIMEOUT_S): timeout of every collective; a rank that waits longer for a
    stalled or dead peer raises an error naming itself (see :mod:`maskrcnn_benchmark.utils.comm`).

    Returns: ``(distributed, local_rank)``.
    """
    local_rank = get_local_rank(local_rank)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    distributed = world_size > 1
    is_cuda = str(device).startswith("cuda")
    if is_cuda and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if distributed and not (dist.is_available() and dist.is_initialized()):
        os.environ.setdefault("RANK", str(local_rank))
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world_size} but ${var} is not set; launch with torchrun "
                                   f"or python -m torch.distributed.launch")
        backend = "nccl" if is_cuda else "gloo"
        if timeout_s <= 0:
            raise ValueError(f"DIST_TIMEOUT_S must be positive, got {timeout_s}")
        set_timeout(timeout_s)
        dist.init_process_group(backend=backend, init_method="env://",
                                timeout=datetime.timedelta(seconds=timeout_s))
        synchronize()
    return distributed, local_rank
