"""Learning-rate schedule of maskrcnn-benchmark: warmup, then piecewise-constant decay."""
from __future__ import annotations

from bisect import bisect_right
from typing import Any, Dict, List, Sequence

import torch

_WARMUP_METHODS = ("constant", "linear")


def warmup_multistep_factor(iteration: int, milestones: Sequence[int], gamma: float,
                            warmup_factor: float, warmup_iters: int, warmup_method: str) -> float:
    """Multiplier of the base lr for the update of index ``iteration`` (0-based).

    Warmup (``iteration < warmup_iters``): ``warmup_factor`` ("constant"), or a linear ramp
    ``warmup_factor * (1 - a) + a`` with ``a = iteration / warmup_iters`` ("linear").
    Decay: ``gamma ** (number of milestones <= iteration)``. The two multiply.
    """
    factor = 1.0
    if iteration < warmup_iters:
        if warmup_method == "constant":
            factor = warmup_factor
        elif warmup_method == "linear":
            alpha = float(iteration) / warmup_iters
            factor = warmup_factor * (1.0 - alpha) + alpha
        else:
            raise ValueError(f"Unknown warmup method {warmup_method!r}; expected one of {_WARMUP_METHODS}")
    return factor * gamma ** bisect_right(list(milestones), iteration)


class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """Warmup followed by multi-step decay (``SOLVER.STEPS`` / ``GAMMA`` / ``WARMUP_*``).

    ``last_epoch`` counts optimizer updates: call ``scheduler.step()`` after every
    ``optimizer.step()``; update ``i`` (0-based) uses ``base_lr * warmup_multistep_factor(i, ...)``.

    Resuming: :meth:`load_state_dict` restores only the position (``last_epoch``); milestones, gamma,
    warmup and base lrs stay those this scheduler was built with (the config in force), and every
    param group's lr is re-derived from them, so a changed SOLVER.STEPS / BASE_LR takes effect from
    the resume point.

    Args:
        optimizer: the wrapped optimizer (each param group keeps its own ``initial_lr``).
        milestones: strictly increasing iterations at which the lr is multiplied by ``gamma``.
        gamma: decay factor.
        warmup_factor: lr multiplier at iteration 0.
        warmup_iters: warmup length in iterations (0: no warmup).
        warmup_method: "constant" or "linear".
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 warmup_factor: float = 1.0 / 3, warmup_iters: int = 500, warmup_method: str = "linear",
                 last_epoch: int = -1):
        milestones = [int(m) for m in milestones]
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"SOLVER.STEPS / milestones must be strictly increasing integers, got {milestones}")
        if warmup_method not in _WARMUP_METHODS:
            raise ValueError(f"Unknown warmup method {warmup_method!r}; expected one of {_WARMUP_METHODS}")
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def _factor(self) -> float:
        return warmup_multistep_factor(self.last_epoch, self.milestones, self.gamma, self.warmup_factor,
                                       self.warmup_iters, self.warmup_method)

    def get_lr(self) -> List[float]:
        return [base_lr * self._factor() for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> List[float]:
        return self.get_lr()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Take the position (``last_epoch``, ``_step_count``) from a saved state and set every param
        group's lr to ``base_lr * factor(last_epoch)`` of *this* schedule (see the class docstring);
        the saved milestones / gamma / warmup / base lrs are ignored."""
        if "last_epoch" not in state_dict:
            raise ValueError(f"scheduler state has no 'last_epoch' (keys: {sorted(state_dict)})")
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs
