"""Distributed helpers that are no-ops in a single process.

Every collective here runs under the process group's timeout (DIST_TIMEOUT_S, set by
:func:`~maskrcnn_benchmark.utils.launch.init_distributed`); when it expires, or a peer died, the
error is re-raised naming this rank, the operation and the timeout (logged as well), and a gloo
barrier reports which ranks never arrived.
"""
from __future__ import annotations

import datetime
import logging
import os
import socket
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist

logger = logging.getLogger("maskrcnn_benchmark.comm")
_timeout_s: Optional[float] = None  # the process group's collective timeout (set_timeout)


def set_timeout(timeout_s: float) -> None:
    """Record the collective timeout the process group was created with (for messages and barriers)."""
    global _timeout_s
    _timeout_s = float(timeout_s)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def _collective(what: str, fn: Callable, *args, **kwargs):
    """Run ``fn``; a failure (timeout, dead peer) is re-raised as RuntimeError naming this rank and ``what``."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:  # DistBackendError (timeouts, closed connections) derives from it
        timeout = f"{_timeout_s:g} s" if _timeout_s is not None else "the process group's timeout"
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        msg = (f"rank {get_rank()} of {get_world_size()} (pid {os.getpid()} on {socket.gethostname()}) gave up "
               f"waiting in {what} for the other processes after {timeout} (DIST_TIMEOUT_S): another rank stalled, "
               f"died or is still busy ({detail})")
        logger.error(msg)
        raise RuntimeError(msg) from e


def synchronize() -> None:
    """Barrier across processes (no-op in one process). With gloo a monitored barrier, whose error on
    rank 0 names the ranks that did not arrive within the timeout."""
    if not is_dist() or get_world_size() < 2:
        return
    if dist.get_backend() == "gloo" and _timeout_s is not None:
        _collective("barrier", dist.monitored_barrier, timeout=datetime.timedelta(seconds=_timeout_s),
                    wait_all_ranks=True)
    else:
        _collective("barrier", dist.barrier)


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all processes (a new tensor; autograd-free)."""
    if not is_dist() or get_world_size() == 1:
        return tensor
    tensor = tensor.clone()
    _collective("all_reduce", dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(data: Any) -> List[Any]:
    """Gather any picklable object from every process; returns a list of world-size items."""
    if not is_dist() or get_world_size() == 1:
        return [data]
    out: List[Any] = [None] * get_world_size()
    _collective("all_gather", dist.all_gather_object, out, data)
    return out


def reduce_dict(values: Dict[str, torch.Tensor], average: bool = True) -> Dict[str, torch.Tensor]:
    """All-reduce a dict of scalar tensors (for logging); keys must be the same on every rank."""
    world = get_world_size()
    if world < 2:
        return values
    with torch.no_grad():
        names = sorted(values.keys())
        stacked = torch.stack([values[k].detach().float() for k in names])
        _collective("all_reduce (losses)", dist.all_reduce, stacked)
        if average:
            stacked /= world
        return dict(zip(names, stacked))
