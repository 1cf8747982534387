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

A hook reads and writes the shared :class:`TrainState` (``self.state``). The hooks of a run, in this
order (``trainer.default_hooks``): :class:`NonFiniteLossCheck`, :class:`EMAHook` (SOLVER.EMA_DECAY),
:class:`LoggingHook`, :class:`UnmatchedGTWarning`, :class:`MetricsHook` (metrics.jsonl / TensorBoard),
:class:`PeriodicEvaluation`,
:class:`PeriodicCheckpoint`. The order makes the EMA current before an evaluation, and at the end
(reverse order) saves ``model_final`` before the final evaluation, whose results the metrics hook
writes before it closes its files.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import torch
from torch import nn

from maskrcnn_benchmark.utils.checkpoint import Checkpointer, get_rng_state, set_rng_state
from maskrcnn_benchmark.utils.comm import reduce_dict
from maskrcnn_benchmark.utils.metric_logger import MetricLogger, ProgressBar, format_eta, memory_usage_mb
from maskrcnn_benchmark.utils.metrics_io import METRICS_FILE, MetricsWriter, truncate_metrics

__all__ = ["TrainState", "HookBase", "NonFiniteLossCheck", "EMAHook", "LoggingHook", "MetricsHook",
           "UnmatchedGTWarning", "collect_step_metrics", "gt_tuning_keys",
           "PeriodicCheckpoint", "PeriodicEvaluation", "train_step", "run_training", "check_losses_finite",
           "evaluation_scalars"]


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
    step_metrics: Dict[str, torch.Tensor] = field(default_factory=dict)
    _loss_values: Optional[Dict[str, float]] = None
    _metric_values: Dict[str, float] = field(default_factory=dict)
    _loss_values_of: Optional[Dict[str, torch.Tensor]] = None  # the loss_dict they were computed from

    def restart_timer(self) -> None:
        """Starts timing the next iteration now (a hook that paused training calls this)."""
        self._tic = time.perf_counter()

    def loss_values(self) -> Dict[str, float]:
        """The current iteration's losses as Python floats ``{name: value}``, with ``"loss"`` (their
        sum) first; one host transfer per iteration (the step's only synchronisation), shared by
        every hook that asks and carrying :attr:`step_metrics` along (:meth:`metric_values`)."""
        if self._loss_values is None or self._loss_values_of is not self.loss_dict:
            names = list(self.loss_dict)
            metric_names = list(self.step_metrics)
            tensors = [self.loss_dict[k].float().reshape(()) for k in names]
            tensors += [self.step_metrics[k].detach().float().reshape(()) for k in metric_names]
            values = torch.stack(tensors).tolist() if tensors else []
            losses, metrics = values[:len(names)], values[len(names):]
            self._loss_values = {"loss": float(sum(losses)), **dict(zip(names, losses))}
            self._metric_values = dict(zip(metric_names, metrics))
            self._loss_values_of = self.loss_dict
        return self._loss_values

    def metric_values(self) -> Dict[str, float]:
        """The current iteration's :attr:`step_metrics` (e.g. the assignment's GT statistics) as
        Python floats, read in the same transfer as :meth:`loss_values`."""
        self.loss_values()
        return self._metric_values


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


def check_losses_finite(loss_dict: Dict[str, Any], iteration: int) -> None:
    """Raise ``FloatingPointError`` naming every non-finite loss term (and the total if it overflowed).

    ``loss_dict``: ``{name: float}`` (what :meth:`TrainState.loss_values` read, no further transfer) or
    ``{name: Tensor[]}`` (one host-device synchronisation when every term is finite: the float32 sum of
    the terms is finite; the terms are read one by one only to name the bad ones)."""
    if not loss_dict:
        return
    terms = list(loss_dict.values())
    if all(isinstance(v, (int, float)) for v in terms):
        if all(math.isfinite(v) for v in terms) and math.isfinite(sum(terms)):
            return
    elif bool(torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in terms]).sum())):
        return
    values = {k: float(v) for k, v in loss_dict.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    total = sum(values.values())
    if not bad and not math.isfinite(total):
        bad = {"total": total}
    if bad:
        terms_text = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise FloatingPointError(f"Loss became non-finite at iteration {iteration}: {terms_text}. "
                                 f"Training stopped; the last good checkpoint is left untouched.")


class NonFiniteLossCheck(HookBase):
    """Stops training (``FloatingPointError``) before the update of a non-finite loss; the verdict
    is the same on every rank (it reads the all-reduced losses)."""

    def after_losses(self, loss_dict):
        if loss_dict is self.state.loss_dict:  # the floats the logging hooks reuse: one host transfer
            values = self.state.loss_values()
            loss_dict = {k: values[k] for k in loss_dict}
        check_losses_finite(loss_dict, self.state.iteration)


class LoggingHook(HookBase):
    """Meters, the progress bar and a log line every ``log_period`` iterations and at the end;
    the total time at the end."""

    def __init__(self, log_period: int = 20, show_progress: bool = True):
        self.log_period = int(log_period)
        self.show_progress = show_progress
        self.meters = MetricLogger(delimiter="  ")

    def before_train(self):
        s = self.state
        s.logger.info("Start training: iterations %d -> %d", s.start_iter, s.max_iter)
        self.progress = ProgressBar(s.max_iter, enabled=None if self.show_progress else False)
        self.start_time = time.perf_counter()
        self.end_time = None

    def after_step(self):
        s = self.state
        self.meters.update(**s.loss_values())
        self.meters.update(time=s.step_time, data=s.data_time)
        if s.iteration == s.max_iter:
            self.end_time = time.perf_counter()  # the total leaves out the final evaluation
        eta = format_eta(self.meters.time.global_avg * (s.max_iter - s.iteration))
        self.progress.update(s.iteration, f"loss {self.meters.loss.median:.4f}  lr {s.lr:.6f}  eta {eta}")
        if (self.log_period > 0 and s.iteration % self.log_period == 0) or s.iteration == s.max_iter:
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
        total = (self.end_time or time.perf_counter()) - self.start_time
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
    """Calls ``test_fn(iteration)`` every ``period`` iterations (> 0; not at the last one) and, with
    ``final``, once more at the end of training (``after_train``, at ``max_iter``), with the random
    generators saved and restored, so evaluation does not change training; the result is kept in
    ``state.storage["eval"]`` and passed to ``after_eval(iteration, result)`` (e.g.
    :meth:`MetricsHook.write_evaluation`). The time it takes is not counted in the next iteration."""

    def __init__(self, test_fn: Callable[[int], Any], period: int,
                 before_eval: Optional[Callable[[], None]] = None, final: bool = False,
                 after_eval: Optional[Callable[[int, Any], None]] = None):
        self.test_fn = test_fn
        self.period = int(period)
        self.before_eval = before_eval
        self.final = bool(final)
        self.after_eval = after_eval

    def _evaluate(self, iteration: int) -> None:
        s = self.state
        if self.before_eval is not None:
            self.before_eval()
        rng = get_rng_state()
        s.storage["eval"] = self.test_fn(iteration)
        set_rng_state(rng)
        if self.after_eval is not None:
            self.after_eval(iteration, s.storage["eval"])

    def after_step(self):
        s = self.state
        if self.period > 0 and s.iteration % self.period == 0 and s.iteration != s.max_iter:
            self._evaluate(s.iteration)
            s.model.train()
            s.restart_timer()

    def after_train(self):
        if self.final:
            self._evaluate(self.state.max_iter)


class HeartbeatHook(HookBase):
    """Tells the stall watchdog (:class:`~maskrcnn_benchmark.utils.heartbeat.Heartbeat`) what the loop
    does: phase ``"step"`` (monitored for progress) from ``before_step``, and after each step the
    finished iteration and phase ``"hooks"`` (evaluation, checkpoint writing: exempt). It must be
    the first hook, so that ``"hooks"`` is announced before the other hooks' ``after_step``."""

    def __init__(self, heartbeat):
        self.heartbeat = heartbeat

    def before_step(self):
        from maskrcnn_benchmark.utils.heartbeat import MONITORED_PHASE

        self.heartbeat.update(phase=MONITORED_PHASE)

    def after_step(self):
        self.heartbeat.update(iteration=self.state.iteration, phase="hooks")


class EMAHook(HookBase):
    """After every update: ``ema.update(model)`` (:class:`~maskrcnn_benchmark.solver.ema.ModelEMA`:
    ``ema = decay * ema + (1 - decay) * w`` for every parameter and buffer). It runs before the
    evaluation and checkpoint hooks, so both see the average of the same iteration."""

    def __init__(self, ema):
        self.ema = ema

    def after_step(self):
        self.ema.update(self.state.model)


def evaluation_scalars(results: Mapping[str, Mapping[str, float]]) -> Dict[str, Dict[str, float]]:
    """``{dataset: {"bbox/AP": ..., ...}}`` from ``run_test``'s ``{dataset: {"AP": ..., ...}}`` (the
    metrics.jsonl names of the box metrics)."""
    return {name: {f"bbox/{k}": float(v) for k, v in metrics.items()} for name, metrics in (results or {}).items()}


class MetricsHook(HookBase):
    """Writes ``output_dir/metrics.jsonl`` (format: :mod:`maskrcnn_benchmark.utils.metrics_io`) and,
    when ``torch.utils.tensorboard`` can be imported (package ``tensorboard``), TensorBoard event
    files in ``output_dir``. Use it on the main process only.

    Every ``log_period`` iterations and at the last one, a line with ``lr`` (of that update), the
    means since the previous line of ``time``, ``data_time``, ``loss`` and every loss term, and
    ``memory_mb`` (peak allocated CUDA memory; absent on the CPU). The losses are the floats
    :meth:`TrainState.loss_values` already moved to the host for the log, so it adds no device
    synchronisation. :meth:`write_evaluation` adds the evaluation lines (``dataset`` and
    ``bbox/AP``... at their iteration).

    Resuming at iteration ``k``: the lines of iterations > ``k`` (written after the checkpoint by
    the interrupted run) are dropped and the file is appended to; TensorBoard purges its events
    after ``k`` too.
    """

    def __init__(self, output_dir: str, log_period: int = 20, tensorboard: bool = True):
        self.output_dir = output_dir
        self.log_period = int(log_period)
        self.tensorboard = bool(tensorboard)
        self.writer: Optional[MetricsWriter] = None
        self.tb = None

    def before_train(self):
        s = self.state
        path = os.path.join(self.output_dir, METRICS_FILE)
        dropped = truncate_metrics(path, s.start_iter)
        if dropped:
            s.logger.info("%s: dropped %d line(s) after iteration %d (the resumed run writes them again)",
                          path, dropped, s.start_iter)
        self.writer = MetricsWriter(path)
        self.tb = self._open_tensorboard(s.start_iter) if self.tensorboard else None
        self._sums: Dict[str, float] = {}
        self._count = 0

    def _open_tensorboard(self, start_iter: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.state.logger.info("TensorBoard event files are not written: the 'tensorboard' package is not "
                                   "installed (pip install tensorboard); metrics.jsonl is")
            return None
        return SummaryWriter(self.output_dir, purge_step=start_iter + 1 if start_iter > 0 else None)

    def after_step(self):
        s = self.state
        values = dict(s.loss_values())
        values.update(time=s.step_time, data_time=s.data_time)
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1
        if (self.log_period > 0 and s.iteration % self.log_period == 0) or s.iteration == s.max_iter:
            scalars: Dict[str, float] = {"lr": s.lr}
            scalars.update({k: v / self._count for k, v in self._sums.items()})
            if s.device.type == "cuda" and torch.cuda.is_available():
                scalars["memory_mb"] = torch.cuda.max_memory_allocated(s.device) / 1024 ** 2
            self._write(s.iteration, scalars, tag_prefix="train/")
            self._sums, self._count = {}, 0

    def write_evaluation(self, iteration: int, results: Optional[Mapping[str, Mapping[str, float]]]) -> None:
        """One line per dataset of ``results`` (``run_test``'s ``{dataset: {"AP": ...}}``): ``dataset``
        and ``bbox/AP``, ``bbox/AP50``, ... at ``iteration``."""
        for name, scalars in evaluation_scalars(results).items():
            self._write(iteration, scalars, dataset=name, tag_prefix=f"{name}/")

    def _write(self, iteration: int, scalars: Dict[str, float], dataset: Optional[str] = None,
               tag_prefix: str = "") -> None:
        if self.writer is None:
            return
        extra = {"dataset": dataset} if dataset is not None else {}
        self.writer.write(iteration, **extra, **scalars)
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(tag_prefix + k, v, iteration)
            self.tb.flush()

    def after_train(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def collect_step_metrics(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The ``step_metrics`` dicts (0-dim tensors, e.g. the dense head's GT statistics) of the
    modules of ``model`` after a training forward, merged; nothing is read from the device."""
    out: Dict[str, torch.Tensor] = {}
    for m in model.modules():
        metrics = getattr(m, "step_metrics", None)
        if isinstance(metrics, dict):
            out.update(metrics)
    return out


def gt_tuning_keys(model: nn.Module) -> List[str]:
    """The config keys that decide which GTs get a positive (``tuning_keys`` of the dense head's
    assigner or loss), for the "no positive" warning."""
    keys: List[str] = []
    for m in model.modules():
        for part in (getattr(m, "assigner", None), getattr(m, "loss_evaluator", None)):
            keys += [k for k in getattr(part, "tuning_keys", ()) if k not in keys]
    return keys


class UnmatchedGTWarning(HookBase):
    """A warning every ``log_period`` iterations (and at the end) when GTs got no positive prior
    in that period: how many of how many, the smallest such box (``sqrt(area)`` in input pixels)
    and the config keys that change it. Reads the assignment's statistics
    (``num_gt``, ``num_gt_unmatched``, ``min_unmatched_size`` in :attr:`TrainState.step_metrics`)
    from :meth:`TrainState.metric_values`, the step's one host transfer; counts are this
    process's."""

    def __init__(self, log_period: int = 20):
        self.log_period = int(log_period)
        self._reset()

    def _reset(self) -> None:
        self.num_gt, self.unmatched, self.min_size, self.iterations = 0.0, 0.0, math.inf, 0

    def before_train(self):
        self.keys = gt_tuning_keys(self.state.model)
        self._reset()

    def after_step(self):
        s = self.state
        m = s.metric_values()
        if "num_gt_unmatched" in m:
            self.num_gt += m["num_gt"]
            self.unmatched += m["num_gt_unmatched"]
            self.min_size = min(self.min_size, m["min_unmatched_size"])
        self.iterations += 1
        if (self.log_period > 0 and s.iteration % self.log_period == 0) or s.iteration == s.max_iter:
            if self.unmatched > 0:
                s.logger.warning(
                    "%d of %d GT boxes got no positive sample over the last %d iteration(s) (they "
                    "train no box regression); the smallest was %.1f px (sqrt of its area, input "
                    "pixels). Keys that change this: %s", self.unmatched, self.num_gt,
                    self.iterations, self.min_size, ", ".join(self.keys) or "the head's assigner keys")
            self._reset()


def train_step(state: TrainState, images, targets, hooks: Iterable[HookBase] = ()) -> None:
    """One update: forward under autocast, reduced losses (``after_losses`` hooks), backward,
    optional gradient clipping and the optimizer / scheduler steps (the same code with and
    without a GradScaler). Sets ``state.loss_dict`` and ``state.lr``."""
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    with torch.autocast(device_type=state.device.type, dtype=state.amp_dtype or torch.float32,
                        enabled=state.amp_dtype is not None):
        loss_dict = model(images, targets)
    state.step_metrics = collect_step_metrics(model)
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
        images = images.to(state.device, non_blocking=True)  # pinned by the loader on CUDA
        targets = [t.to(state.device, non_blocking=True) for t in targets]
        train_step(state, images, targets, hooks)
        state.arguments["iteration"] = iteration
        state.step_time = time.perf_counter() - state._tic
        state.restart_timer()
        for h in hooks:
            h.after_step()
    for h in reversed(hooks):
        h.after_train()
