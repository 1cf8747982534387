"""The training loop as one step function plus hooks (detectron2 style).

:func:`run_training` runs ``train_step`` from ``state.start_iter`` to ``state.max_iter`` and calls
each :class:`HookBase` at five points::

    before_train()
    for every iteration:
        before_step()
        [forward]  after_losses(loss_dict)   # reduced, detached losses, before any update
        [backward, clip, optimizer / scheduler step]
        after_step()
    after_train()                            # in reverse hook order; not after an exception

A hook reads and writes the shared :class:`TrainState` (``self.state``). Later features (EMA,
TensorBoard, metrics.jsonl) are one hook each, passed to ``do_train(..., hooks=[...])``.
The default hooks: :class:`NonFiniteLossCheck`, :class:`LoggingHook`, :class:`PeriodicCheckpoint`,
:class:`PeriodicEvaluation`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from maskrcnn_benchmark.utils.checkpoint import Checkpointer, get_rng_state, set_rng_state
from maskrcnn_benchmark.utils.comm import reduce_dict
from maskrcnn_benchmark.utils.metric_logger import MetricLogger, ProgressBar, format_eta, memory_usage_mb

__all__ = ["TrainState", "HookBase", "NonFiniteLossCheck", "LoggingHook", "PeriodicCheckpoint",
           "PeriodicEvaluation", "train_step", "run_training", "check_losses_finite"]


@dataclass
class TrainState:
    """What the loop and its hooks share.

    Attributes:
        model, optimizer, scheduler, device: the training objects.
        arguments: saved in every checkpoint; ``arguments["iteration"]`` = finished updates.
        start_iter, max_iter: the run goes from update ``start_iter + 1`` to ``max_iter``.
        amp_dtype, scaler, clip_grad_norm: the step's mixed precision / clipping settings.
        logger: the training logger.
        iteration: the current update (1-based; ``start_iter`` before the first).
        loss_dict: the current iteration's reduced, detached float losses (``{name: Tensor[]}``).
        lr: the learning rate of the current update.
        data_time, step_time: seconds spent waiting for the batch / in the whole iteration.
        storage: free dict for hooks to exchange values (e.g. evaluation results).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    arguments: Dict[str, Any]
    start_iter: int
    max_iter: int
    amp_dtype: Optional[torch.dtype] = None
    scaler: Any = None
    clip_grad_norm: float = 0.0
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("maskrcnn_benchmark.trainer"))
    iteration: int = 0
    loss_dict: Dict[str, torch.Tensor] = field(default_factory=dict)
    lr: float = 0.0
    data_time: float = 0.0
    step_time: float = 0.0
    storage: Dict[str, Any] = field(default_factory=dict)
    _tic: float = 0.0

    def restart_timer(self) -> None:
        """Starts timing the next iteration now (a hook that paused training calls this)."""
        self._tic = time.perf_counter()


class HookBase:
    """Base of the training hooks; every method is a no-op. ``self.state`` is set by the loop."""

    state: TrainState

    def before_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_losses(self, loss_dict: Dict[str, torch.Tensor]) -> None:
        """Called with the reduced losses of the iteration, before backward / the update."""

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass


def check_losses_finite(loss_dict: Dict[str, torch.Tensor], iteration: int) -> None:
    """Raise ``FloatingPointError`` naming every non-finite loss term (and the total if it overflowed).

    One host-device synchronisation when every term is finite (the float32 sum of the terms is
    finite); the terms are read one by one only to name the bad ones."""
    if not loss_dict:
        return
    if bool(torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()]).sum())):
        return
    values = {k: float(v) for k, v in loss_dict.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    total = sum(values.values())
    if not bad and not math.isfinite(total):
        bad = {"total": total}
    if bad:
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise FloatingPointError(f"Loss became non-finite at iteration {iteration}: {terms}. "
                                 f"Training stopped; the last good checkpoint is left untouched.")


class NonFiniteLossCheck(HookBase):
    """Stops training (``FloatingPointError``) before the update of a non-finite loss; the verdict
    is the same on every rank (it reads the all-reduced losses)."""

    def after_losses(self, loss_dict):
        check_losses_finite(loss_dict, self.state.iteration)


class LoggingHook(HookBase):
    """Meters, the progress bar and a log line every ``log_period`` iterations and at the end;
    the total time at the end.

    The losses of each iteration are kept as (device) tensors and read into the meters in one
    transfer when a line is logged (or, with the terminal progress bar on, once per iteration),
    so logging adds no host-device synchronisation per loss and iteration."""

    def __init__(self, log_period: int = 20, show_progress: bool = True):
        self.log_period = int(log_period)
        self.show_progress = show_progress
        self.meters = MetricLogger(delimiter="  ")
        self._pending: List[Dict[str, torch.Tensor]] = []

    def _flush(self) -> None:
        """Reads the pending iterations' losses (one transfer) into the meters, in order."""
        if not self._pending:
            return
        names = list(self._pending[0])
        rows = torch.stack([torch.stack([d[k].detach().float().reshape(()) for k in names])
                            for d in self._pending]).cpu().tolist()
        for row in rows:
            self.meters.update(loss=sum(row), **dict(zip(names, row)))
        self._pending = []

    def before_train(self):
        s = self.state
        s.logger.info("Start training: iterations %d -> %d", s.start_iter, s.max_iter)
        self.progress = ProgressBar(s.max_iter, enabled=None if self.show_progress else False)
        self.start_time = time.perf_counter()

    def after_step(self):
        s = self.state
        if s.loss_dict:
            self._pending.append(dict(s.loss_dict))
        self.meters.update(time=s.step_time, data=s.data_time)
        eta = format_eta(self.meters.time.global_avg * (s.max_iter - s.iteration))
        log_now = (self.log_period > 0 and s.iteration % self.log_period == 0) or s.iteration == s.max_iter
        if self.progress.enabled or log_now:
            self._flush()
        if self.progress.enabled:
            loss = self.meters.meters["loss"].median if "loss" in self.meters.meters else 0.0
            self.progress.update(s.iteration, f"loss {loss:.4f}  lr {s.lr:.6f}  eta {eta}")
        if log_now:
            self.progress.clear()
            s.logger.info(self.meters.delimiter.join([
                f"eta: {eta}", f"iter: {s.iteration}/{s.max_iter}", str(self.meters),
                f"lr: {s.lr:.6f}", memory_usage_mb(s.device)]))

    def clear_progress(self) -> None:
        """Clears the progress line (before another hook writes to the terminal)."""
        self.progress.clear()

    def after_train(self):
        self.progress.close()
        s = self.state
        total = time.perf_counter() - self.start_time
        done = max(s.max_iter - s.start_iter, 1)
        s.logger.info("Total training time: %s (%.4f s / it)", format_eta(total), total / done)


class PeriodicCheckpoint(HookBase):
    """Saves ``model_{iteration:07d}`` every ``period`` iterations (not at the last one) and
    ``model_final`` at the end (unless nothing was trained and a checkpoint exists)."""

    def __init__(self, checkpointer: Checkpointer, period: int):
        self.checkpointer = checkpointer
        self.period = int(period)

    def after_step(self):
        s = self.state
        if self.period > 0 and s.iteration % self.period == 0 and s.iteration != s.max_iter:
            self.checkpointer.save(f"model_{s.iteration:07d}", **s.arguments)

    def after_train(self):
        s = self.state
        if s.start_iter < s.max_iter or not self.checkpointer.has_checkpoint():
            self.checkpointer.save("model_final", **s.arguments)


class PeriodicEvaluation(HookBase):
    """Calls ``test_fn(iteration)`` every ``period`` iterations (not at the last one) with the
    random generators saved and restored, so evaluation does not change training; the result is
    kept in ``state.storage["eval"]``. The time it takes is not counted in the next iteration."""

    def __init__(self, test_fn: Callable[[int], Any], period: int,
                 before_eval: Optional[Callable[[], None]] = None):
        self.test_fn = test_fn
        self.period = int(period)
        self.before_eval = before_eval

    def after_step(self):
        s = self.state
        if self.period > 0 and s.iteration % self.period == 0 and s.iteration != s.max_iter:
            if self.before_eval is not None:
                self.before_eval()
            rng = get_rng_state()
            s.storage["eval"] = self.test_fn(s.iteration)
            set_rng_state(rng)
            s.model.train()
            s.restart_timer()


def train_step(state: TrainState, images, targets, hooks: Iterable[HookBase] = ()) -> None:
    """One update: forward under autocast, reduced losses (``after_losses`` hooks), backward,
    optional gradient clipping and the optimizer / scheduler steps (the same code with and
    without a GradScaler). Sets ``state.loss_dict`` and ``state.lr``."""
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    with torch.autocast(device_type=state.device.type, dtype=state.amp_dtype or torch.float32,
                        enabled=state.amp_dtype is not None):
        loss_dict = model(images, targets)
    losses = sum(loss_dict.values())
    state.loss_dict = reduce_dict({k: v.detach().float() for k, v in loss_dict.items()})
    for h in hooks:
        h.after_losses(state.loss_dict)
    state.lr = optimizer.param_groups[0]["lr"]  # the lr of this update
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(losses) if scaler is not None else losses).backward()
    if state.clip_grad_norm > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), state.clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    state.scheduler.step()


def run_training(state: TrainState, data_loader, hooks: List[HookBase],
                 rng_state: Optional[Dict[str, Any]] = None) -> None:
    """The loop: batches from ``data_loader`` (built to start at ``state.start_iter``), one
    :func:`train_step` each, the hooks around it (see the module docstring).

    ``rng_state``: random generator snapshot restored after the loader iterator exists, so a
    resumed run draws exactly the numbers the uninterrupted run would.
    """
    for h in hooks:
        h.state = state
    state.model.train()
    data_iter = iter(data_loader)
    if rng_state is not None:
        set_rng_state(rng_state)
    for h in hooks:
        h.before_train()
    state.restart_timer()
    for iteration in range(state.start_iter + 1, state.max_iter + 1):
        state.iteration = iteration
        for h in hooks:
            h.before_step()
        try:
            images, targets, _ = next(data_iter)
        except StopIteration:
            raise RuntimeError(f"The training data loader ended after iteration {iteration - 1}; it must yield "
                               f"{state.max_iter - state.start_iter} batches (built with "
                               f"start_iter={state.start_iter})") from None
        state.data_time = time.perf_counter() - state._tic
        images = images.to(state.device)
        targets = [t.to(state.device) for t in targets]
        train_step(state, images, targets, hooks)
        state.arguments["iteration"] = iteration
        state.step_time = time.perf_counter() - state._tic
        state.restart_timer()
        for h in hooks:
            h.after_step()
    for h in reversed(hooks):
        h.after_train()
