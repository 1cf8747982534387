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
from maskrcnn_benchmark.utils.checkpoint import Checkpointer, select_rng_state
from maskrcnn_benchmark.utils.amp import resolve_amp  # noqa: F401  (re-exported: the trainer's API)
from maskrcnn_benchmark.utils.comm import get_rank, get_world_size, is_main_process
from maskrcnn_benchmark.utils.miscellaneous import mkdir, save_config

from .hooks import (HookBase, LoggingHook, NonFiniteLossCheck, PeriodicCheckpoint, PeriodicEvaluation,
                    TrainState, run_training)


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
                  test_fn: Optional[Callable[[int], Any]] = None, test_period: int = 0) -> List[HookBase]:
    """The hooks of every run: non-finite check, logging, periodic / final checkpoint, periodic
    evaluation (when ``test_fn`` is given)."""
    logging_hook = LoggingHook(log_period, show_progress=is_main_process())
    hooks: List[HookBase] = [NonFiniteLossCheck(), logging_hook,
                             PeriodicCheckpoint(checkpointer, checkpoint_period)]
    if test_fn is not None and test_period > 0:
        hooks.append(PeriodicEvaluation(test_fn, test_period, before_eval=logging_hook.clear_progress))
    return hooks


def do_train(model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, scheduler, checkpointer: Checkpointer,
             device: torch.device, checkpoint_period: int, arguments: Dict[str, Any], *, max_iter: int,
             log_period: int = 20, amp_dtype: Optional[torch.dtype] = None, scaler=None,
             clip_grad_norm: float = 0.0, test_fn: Optional[Callable[[int], Any]] = None, test_period: int = 0,
             rng_state: Optional[Dict[str, Any]] = None, logger: Optional[logging.Logger] = None,
             hooks: Sequence[HookBase] = ()) -> None:
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
        test_fn: called as ``test_fn(iteration)`` every ``test_period`` iterations (> 0); it runs with the
            random generators saved and restored so that evaluation does not change training.
        rng_state: random generator snapshot to restore when resuming (after the loader iterator exists,
            so a resumed run draws exactly the numbers the uninterrupted run would).
        hooks: extra :class:`~.hooks.HookBase` hooks (EMA, TensorBoard, ...), run after the default ones.
    A non-finite loss raises ``FloatingPointError`` before the update; nothing is saved afterwards.
    """
    state = TrainState(model=model, optimizer=optimizer, scheduler=scheduler, device=device,
                       arguments=arguments, start_iter=int(arguments["iteration"]), max_iter=int(max_iter),
                       amp_dtype=amp_dtype, scaler=scaler, clip_grad_norm=float(clip_grad_norm),
                       logger=logger or logging.getLogger("maskrcnn_benchmark.trainer"))
    all_hooks = default_hooks(checkpointer, checkpoint_period, log_period, test_fn, test_period) + list(hooks)
    run_training(state, data_loader, all_hooks, rng_state=rng_state)


# ---- entry point ------------------------------------------------------------------------------------
def train(cfg, local_rank: int = 0, distributed: bool = False, skip_test: bool = False) -> nn.Module:
    """Train the model of ``cfg`` (resuming from ``cfg.OUTPUT_DIR`` when it has a checkpoint); evaluate on
    DATASETS.TEST at the end (and every SOLVER.TEST_PERIOD iterations) unless ``skip_test``.

    The run holds a lock on OUTPUT_DIR (:func:`~maskrcnn_benchmark.utils.run_lock.training_lock`: a
    second run on the folder stops at once naming the holder) and first removes the temp files of
    writes an earlier, killed run left. Returns the trained model (unwrapped from DDP).
    """
    from maskrcnn_benchmark.utils.run_lock import training_lock

    if cfg.SOLVER.MAX_ITER <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be positive (the number of training iterations), got "
                         f"{cfg.SOLVER.MAX_ITER}")
    with training_lock(cfg.OUTPUT_DIR, distributed):
        return _train(cfg, local_rank, distributed, skip_test)


def _train(cfg, local_rank: int, distributed: bool, skip_test: bool) -> nn.Module:
    from maskrcnn_benchmark.data import make_data_loader
    from maskrcnn_benchmark.engine.inference import run_test
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.layers.batch_norm import convert_sync_batchnorm
    from maskrcnn_benchmark.solver import make_lr_scheduler, make_optimizer, scale_lr_to_batch
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
    if resume_data is not None:
        extra = checkpointer.restore(resume_data)
        del resume_data
    else:
        extra = {}
        checkpointer.load_weights(cfg.MODEL.WEIGHT, tuple(cfg.MODEL.RESNETS.STAGE_WITH_DCN),
                                  min_match=cfg.MODEL.WEIGHT_MIN_MATCH)
    arguments = {"iteration": start_iter, "class_names": list(data_loader.class_names)}  # saved in checkpoints
    if distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None,
            output_device=local_rank if device.type == "cuda" else None, broadcast_buffers=False)

    def test_fn(iteration: int):
        logger.info("Evaluating at iteration %d", iteration)
        return run_test(cfg, unwrap_model(model), distributed)

    do_train(model, data_loader, optimizer, scheduler, checkpointer, device, cfg.SOLVER.CHECKPOINT_PERIOD,
             arguments, max_iter=cfg.SOLVER.MAX_ITER, log_period=cfg.SOLVER.LOG_PERIOD, amp_dtype=amp_dtype,
             scaler=scaler, clip_grad_norm=cfg.SOLVER.CLIP_GRAD_NORM,
             test_fn=None if skip_test else test_fn, test_period=cfg.SOLVER.TEST_PERIOD,
             rng_state=select_rng_state(extra), logger=logger)
    if not skip_test:
        run_test(cfg, unwrap_model(model), distributed)
    return unwrap_model(model)
