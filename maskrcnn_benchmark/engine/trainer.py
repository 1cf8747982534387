"""Training loop (:func:`do_train`: the step and hooks of :mod:`.hooks`) and the cfg-driven training
entry point (:func:`train`). The NUM_CLASSES helpers live in ``modeling.dense_heads.registry``."""
from __future__ import annotations

import logging
import os
import random
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from maskrcnn_benchmark.modeling.dense_heads.registry import resolve_num_classes
from maskrcnn_benchmark.utils.checkpoint import Checkpointer, load_weight_file, model_identity, select_rng_state
from maskrcnn_benchmark.utils.amp import resolve_amp  # noqa: F401  (re-exported: the trainer's API)
from maskrcnn_benchmark.utils.comm import get_rank, get_world_size, is_main_process
from maskrcnn_benchmark.utils.legacy_plus_one import resolve_legacy_plus_one
from maskrcnn_benchmark.utils.miscellaneous import mkdir, save_config

from .hooks import (EMAHook, HeartbeatHook, HookBase, LoggingHook, MetricsHook, NonFiniteLossCheck,
                    PeriodicCheckpoint, PeriodicEvaluation, TrainState, UnmatchedGTWarning, run_training)


# ---- mixed precision ----------------------------------------------------------------------
def make_grad_scaler(amp_dtype: Optional[torch.dtype], device: torch.device) -> Optional[torch.amp.GradScaler]:
    """A GradScaler for fp16 training on CUDA (bf16 and fp32 need none)."""
    if amp_dtype is torch.float16 and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


# ---- checks ---------------------------------------------------------------------------------
def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (``seed < 0``: leave the generators alone)."""
    if seed < 0:
        return
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# ---- the loop -----------------------------------------------------------------------------------
def default_hooks(checkpointer: Checkpointer, checkpoint_period: int, log_period: int = 20,
                  test_fn: Optional[Callable[[int], Any]] = None, test_period: int = 0, test_final: bool = False,
                  ema=None, metrics_dir: str = "", tensorboard: bool = True) -> List[HookBase]:
    """The hooks of a run, in the order of :mod:`.hooks`: non-finite check, EMA update (``ema``: a
    :class:`~maskrcnn_benchmark.solver.ema.ModelEMA`), logging, the "GTs without a positive"
    warning, metrics.jsonl / TensorBoard (when
    ``metrics_dir``; pass it on the main process only), evaluation (when ``test_fn`` is given: every
    ``test_period`` iterations and, with ``test_final``, at the end) and periodic / final checkpoint."""
    logging_hook = LoggingHook(log_period, show_progress=is_main_process())
    hooks: List[HookBase] = [NonFiniteLossCheck()]
    if ema is not None:
        hooks.append(EMAHook(ema))
    hooks.append(logging_hook)
    hooks.append(UnmatchedGTWarning(log_period))
    metrics = MetricsHook(metrics_dir, log_period, tensorboard=tensorboard) if metrics_dir else None
    if metrics is not None:
        hooks.append(metrics)
    if test_fn is not None and (test_period > 0 or test_final):
        hooks.append(PeriodicEvaluation(test_fn, test_period, before_eval=logging_hook.clear_progress,
                                        final=test_final,
                                        after_eval=metrics.write_evaluation if metrics is not None else None))
    hooks.append(PeriodicCheckpoint(checkpointer, checkpoint_period))
    return hooks


def do_train(model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, scheduler, checkpointer: Checkpointer,
             device: torch.device, checkpoint_period: int, arguments: Dict[str, Any], *, max_iter: int,
             log_period: int = 20, amp_dtype: Optional[torch.dtype] = None, scaler=None,
             clip_grad_norm: float = 0.0, test_fn: Optional[Callable[[int], Any]] = None, test_period: int = 0,
             test_final: bool = False, ema=None, metrics_dir: str = "", tensorboard: bool = True,
             rng_state: Optional[Dict[str, Any]] = None, logger: Optional[logging.Logger] = None,
             hooks: Sequence[HookBase] = (), heartbeat=None) -> None:
    """Run SGD from ``arguments["iteration"]`` to ``max_iter`` (:func:`~.hooks.run_training` with
    :func:`default_hooks` followed by ``hooks``).

    Args:
        model: returns a dict of scalar losses from ``model(images, targets)`` in train mode.
        data_loader: iterable of ``(images: ImageList, targets: list[BoxList], indices)``, built to start at
            ``arguments["iteration"]`` (its sampler continues the same sequence when resuming).
        checkpoint_period: save ``model_{iteration:07d}`` every this many iterations; ``model_final`` at the end.
        arguments: saved in every checkpoint; ``arguments["iteration"]`` is the number of finished updates.
        amp_dtype: autocast dtype (None: off); ``scaler``: GradScaler for fp16 on CUDA.
        clip_grad_norm: max total gradient L2 norm (0: off).
        test_fn: called as ``test_fn(iteration)`` every ``test_period`` iterations (> 0) and, with
            ``test_final``, after training (after ``model_final`` is saved); it runs with the random
            generators saved and restored so that evaluation does not change training.
        ema: a :class:`~maskrcnn_benchmark.solver.ema.ModelEMA` updated after every step (None: off); the
            caller makes ``test_fn`` evaluate ``ema.model`` and gives it to the checkpointer.
        metrics_dir: folder of metrics.jsonl (and TensorBoard events when ``tensorboard`` and the package is
            installed); "" writes none (use "" on all but the main process).
        rng_state: random generator snapshot to restore when resuming (after the loader iterator exists,
            so a resumed run draws exactly the numbers the uninterrupted run would).
        hooks: extra :class:`~.hooks.HookBase` hooks, run after the default ones.
        heartbeat: a :class:`~maskrcnn_benchmark.utils.heartbeat.Heartbeat` (stall watchdog), started
            here, fed by a first :class:`~.hooks.HeartbeatHook` and stopped at the end, however it ends.
    A non-finite loss raises ``FloatingPointError`` before the update; nothing is saved afterwards.
    """
    state = TrainState(model=model, optimizer=optimizer, scheduler=scheduler, device=device,
                       arguments=arguments, start_iter=int(arguments["iteration"]), max_iter=int(max_iter),
                       amp_dtype=amp_dtype, scaler=scaler, clip_grad_norm=float(clip_grad_norm),
                       logger=logger or logging.getLogger("maskrcnn_benchmark.trainer"))
    all_hooks = default_hooks(checkpointer, checkpoint_period, log_period, test_fn, test_period, test_final,
                              ema=ema, metrics_dir=metrics_dir, tensorboard=tensorboard) + list(hooks)
    if heartbeat is None:
        run_training(state, data_loader, all_hooks, rng_state=rng_state)
        return
    heartbeat.start()
    try:
        run_training(state, data_loader, [HeartbeatHook(heartbeat)] + all_hooks, rng_state=rng_state)
    finally:
        heartbeat.stop()


# ---- entry point ------------------------------------------------------------------------------------
def train(cfg, local_rank: int = 0, distributed: bool = False, skip_test: bool = False,
          output_dir_locked: bool = False) -> nn.Module:
    """Train the model of ``cfg`` (resuming from ``cfg.OUTPUT_DIR`` when it has a checkpoint); evaluate on
    DATASETS.TEST at the end (and every SOLVER.TEST_PERIOD iterations) unless ``skip_test`` (with
    SOLVER.EMA_DECAY > 0: the EMA weights); write OUTPUT_DIR/metrics.jsonl (and TensorBoard events).

    Resuming with a changed config follows :data:`RESUME_RULE` and logs every changed key
    (:func:`log_config_changes`). Fine-tuning from MODEL.WEIGHT with another class count skips the
    class-dependent predictors (logged).

    The run holds a lock on OUTPUT_DIR (:func:`~maskrcnn_benchmark.utils.run_lock.training_lock`: a
    second run on the folder stops at once naming the holder) and first removes the temp files of
    writes an earlier, killed run left; ``output_dir_locked``: the caller already holds it (the tools
    take it before they write log.txt). Returns the trained model (unwrapped from DDP).
    """
    from maskrcnn_benchmark.utils.run_lock import training_lock

    if cfg.SOLVER.MAX_ITER <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be positive (the number of training iterations), got "
                         f"{cfg.SOLVER.MAX_ITER}")
    if output_dir_locked:
        return _train(cfg, local_rank, distributed, skip_test)
    with training_lock(cfg.OUTPUT_DIR, distributed):
        return _train(cfg, local_rank, distributed, skip_test)


def _train(cfg, local_rank: int, distributed: bool, skip_test: bool) -> nn.Module:
    from maskrcnn_benchmark.data import make_data_loader
    from maskrcnn_benchmark.engine.inference import run_test
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.layers.batch_norm import convert_sync_batchnorm
    from maskrcnn_benchmark.solver import ModelEMA, make_lr_scheduler, make_optimizer, scale_lr_to_batch
    from maskrcnn_benchmark.utils.checkpoint import unwrap_model

    logger = logging.getLogger("maskrcnn_benchmark.trainer")
    seed_all(cfg.SEED + get_rank() if cfg.SEED >= 0 else -1)
    # The last checkpoint of OUTPUT_DIR (resume) takes precedence over MODEL.WEIGHT (weights only).
    checkpointer = Checkpointer(nn.Identity(), save_dir=cfg.OUTPUT_DIR, save_to_disk=is_main_process(), logger=logger,
                                keep=cfg.SOLVER.CHECKPOINT_KEEP)
    resume_data = checkpointer.read_last()
    start_iter = int(resume_data.get("iteration", 0)) if resume_data else 0
    data_loader = make_data_loader(cfg, is_train=True, is_distributed=distributed, start_iter=start_iter)
    cfg = resolve_num_classes(cfg, data_loader.num_foreground_classes, f"DATASETS.TRAIN={list(cfg.DATASETS.TRAIN)}")
    cfg = scale_lr_to_batch(cfg, logger)  # SOLVER.REFERENCE_BATCH: linear lr scaling rule
    weights = None  # read before the model is built: the keys decide MODEL.LEGACY_PLUS_ONE "auto"
    if resume_data is None and cfg.MODEL.WEIGHT:
        weights = load_weight_file(cfg.MODEL.WEIGHT, tuple(cfg.MODEL.RESNETS.STAGE_WITH_DCN))
    cfg = resolve_legacy_plus_one(cfg, resume_data["model"] if resume_data is not None else weights,
                                  "the resumed checkpoint" if resume_data is not None
                                  else f"MODEL.WEIGHT {cfg.MODEL.WEIGHT}", logger)
    if resume_data is not None:
        log_config_changes(resume_data, cfg, start_iter, os.path.join(cfg.OUTPUT_DIR, "config.yml"), logger)
    if cfg.OUTPUT_DIR:
        mkdir(cfg.OUTPUT_DIR)
        save_config(cfg, os.path.join(cfg.OUTPUT_DIR, "config.yml"))

    device = torch.device(cfg.MODEL.DEVICE)
    model = build_detection_model(cfg).to(device)
    model = convert_sync_batchnorm(model, cfg.MODEL.USE_SYNCBN, get_world_size() if distributed else 1, device, logger)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_lr_scheduler(cfg, optimizer)
    amp_dtype = resolve_amp(cfg.SOLVER.AMP, device)
    scaler = make_grad_scaler(amp_dtype, device)
    checkpointer.model, checkpointer.optimizer, checkpointer.scheduler, checkpointer.scaler = (
        model, optimizer, scheduler, scaler)
    ema_decay = float(cfg.SOLVER.EMA_DECAY)
    if resume_data is not None:
        checkpointer.ema = ModelEMA(model, ema_decay) if ema_decay > 0 else None  # restore() loads "ema"
        extra = checkpointer.restore(resume_data)
        del resume_data
        if extra.pop("ema", None) is not None:
            logger.info("the checkpoint holds EMA weights, but SOLVER.EMA_DECAY is 0: training goes on without EMA")
    else:
        extra = {}
        # fine-tuning: the class-dependent predictors of a checkpoint with another class count are skipped
        checkpointer.load_weights(cfg.MODEL.WEIGHT, tuple(cfg.MODEL.RESNETS.STAGE_WITH_DCN),
                                  min_match=cfg.MODEL.WEIGHT_MIN_MATCH, allow_class_change=True,
                                  identity=model_identity(cfg), state_dict=weights)
        checkpointer.ema = ModelEMA(model, ema_decay) if ema_decay > 0 else None  # starts from the loaded weights
    ema = checkpointer.ema
    if cfg.SOLVER.MAX_ITER <= start_iter:
        logger.warning("SOLVER.MAX_ITER %d <= the resumed iteration %d: nothing to train", cfg.SOLVER.MAX_ITER,
                       start_iter)
    # saved in checkpoints; "config" lets a resumed run list what changed
    arguments = {"iteration": start_iter, "class_names": list(data_loader.class_names), "config": cfg.dump()}
    if distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None,
            output_device=local_rank if device.type == "cuda" else None, broadcast_buffers=False)

    def test_fn(iteration: int):
        logger.info("Evaluating at iteration %d%s", iteration, " (EMA weights)" if ema is not None else "")
        return run_test(cfg, ema.model if ema is not None else unwrap_model(model), distributed)

    do_train(model, data_loader, optimizer, scheduler, checkpointer, device, cfg.SOLVER.CHECKPOINT_PERIOD,
             arguments, max_iter=cfg.SOLVER.MAX_ITER, log_period=cfg.SOLVER.LOG_PERIOD, amp_dtype=amp_dtype,
             scaler=scaler, clip_grad_norm=cfg.SOLVER.CLIP_GRAD_NORM,
             test_fn=None if skip_test else test_fn, test_period=cfg.SOLVER.TEST_PERIOD, test_final=True,
             ema=ema, metrics_dir=cfg.OUTPUT_DIR if is_main_process() else "",
             rng_state=select_rng_state(extra), logger=logger, heartbeat=_heartbeat(cfg))
    return unwrap_model(model)


def _heartbeat(cfg):
    """The stall watchdog of a run (None without OUTPUT_DIR or with DIST_STALL_TIMEOUT_S 0)."""
    from maskrcnn_benchmark.utils.heartbeat import Heartbeat

    if not cfg.OUTPUT_DIR or cfg.DIST_STALL_TIMEOUT_S <= 0:
        return None
    return Heartbeat(cfg.OUTPUT_DIR, get_rank(), get_world_size(), cfg.DIST_HEARTBEAT_PERIOD_S,
                     cfg.DIST_STALL_TIMEOUT_S)


RESUME_RULE = ("the config in force decides the schedule and hyperparameters (SOLVER.STEPS, BASE_LR, GAMMA, "
               "WARMUP_*, MAX_ITER, WEIGHT_DECAY, MOMENTUM, CHECKPOINT_PERIOD, TEST_PERIOD, LOG_PERIOD, EMA_DECAY, ...); "
               "the checkpoint gives the state (weights, optimizer momentum buffers, iteration, RNG, EMA weights)")


def log_config_changes(checkpoint: Dict[str, Any], cfg, start_iter: int, config_yml: str,
                       logger: logging.Logger) -> List[tuple]:
    """Log every difference between the config a checkpoint was trained with and ``cfg`` (the one in
    force), with the resume rule (:data:`RESUME_RULE`); returns ``[(key, old, new)]``.

    The checkpoint's config is its ``"config"`` entry (yaml text, saved since the trainer stores it);
    for older checkpoints ``config_yml`` (OUTPUT_DIR/config.yml, written at the previous start) if it
    exists, else nothing can be compared (logged)."""
    from maskrcnn_benchmark.config import config_differences

    saved, source = checkpoint.get("config"), "the checkpoint"
    if not isinstance(saved, str) and config_yml and os.path.isfile(config_yml):
        with open(config_yml, encoding="utf-8") as f:
            saved, source = f.read(), config_yml
    if not isinstance(saved, str):
        logger.info("Resuming at iteration %d: the checkpoint holds no config to compare with; %s", start_iter,
                    RESUME_RULE)
        return []
    changes = config_differences(saved, cfg)
    if not changes:
        logger.info("Resuming at iteration %d with the config of %s (no differences)", start_iter, source)
        return []
    listed = "\n  ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
    logger.warning("Resuming at iteration %d with a config that differs from that of %s in %d key(s); %s:\n  %s",
                   start_iter, source, len(changes), RESUME_RULE, listed)
    return changes
