"""Training loop (:func:`do_train`) and the cfg-driven training entry point (:func:`train`)."""
from __future__ import annotations

import logging
import math
import os
import random
import time
import warnings
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import nn

from maskrcnn_benchmark.utils.checkpoint import Checkpointer, get_rng_state, select_rng_state, set_rng_state
from maskrcnn_benchmark.utils.comm import get_rank, is_main_process, reduce_dict
from maskrcnn_benchmark.utils.metric_logger import MetricLogger, ProgressBar, format_eta, memory_usage_mb
from maskrcnn_benchmark.utils.miscellaneous import mkdir, save_config

_AMP_DTYPES = {"": None, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---- mixed precision ----------------------------------------------------------------------
def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """``SOLVER.AMP`` ("" / "fp16" / "bf16") -> autocast dtype (None: full precision).

    fp16 autocast is a GPU feature; on the CPU "fp16" falls back to bf16 with a warning.
    """
    key = str(amp).lower()
    if key not in _AMP_DTYPES:
        raise ValueError(f"SOLVER.AMP must be one of {sorted(_AMP_DTYPES)}, got {amp!r}")
    dtype = _AMP_DTYPES[key]
    if dtype is torch.float16 and device.type != "cuda":
        warnings.warn(f"SOLVER.AMP 'fp16' is only supported on CUDA; using bf16 autocast on {device.type}")
        dtype = torch.bfloat16
    return dtype


def make_grad_scaler(amp_dtype: Optional[torch.dtype], device: torch.device) -> Optional[torch.amp.GradScaler]:
    """A GradScaler for fp16 training on CUDA (bf16 and fp32 need none)."""
    if amp_dtype is torch.float16 and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


# ---- checks ---------------------------------------------------------------------------------
def check_losses_finite(loss_dict: Dict[str, torch.Tensor], iteration: int) -> None:
    """Raise ``FloatingPointError`` naming every non-finite loss term (and the total if it overflowed)."""
    values = {k: float(v) for k, v in loss_dict.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    total = sum(values.values())
    if not bad and not math.isfinite(total):
        bad = {"total": total}
    if bad:
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise FloatingPointError(f"Loss became non-finite at iteration {iteration}: {terms}. "
                                 f"Training stopped; the last good checkpoint is left untouched.")


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (``seed < 0``: leave the generators alone)."""
    if seed < 0:
        return
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# ---- the loop -----------------------------------------------------------------------------------
def do_train(model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, scheduler, checkpointer: Checkpointer,
             device: torch.device, checkpoint_period: int, arguments: Dict[str, Any], *, max_iter: int,
             log_period: int = 20, amp_dtype: Optional[torch.dtype] = None, scaler=None,
             clip_grad_norm: float = 0.0, test_fn: Optional[Callable[[int], Any]] = None, test_period: int = 0,
             rng_state: Optional[Dict[str, Any]] = None, logger: Optional[logging.Logger] = None) -> None:
    """Run SGD from ``arguments["iteration"]`` to ``max_iter``.

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
    A non-finite loss raises ``FloatingPointError`` before the update; nothing is saved afterwards.
    """
    logger = logger or logging.getLogger("maskrcnn_benchmark.trainer")
    start_iter = int(arguments["iteration"])
    logger.info("Start training: iterations %d -> %d", start_iter, max_iter)
    meters = MetricLogger(delimiter="  ")
    show_progress = is_main_process()
    progress = ProgressBar(max_iter, enabled=None if show_progress else False)
    model.train()
    data_iter = iter(data_loader)
    if rng_state is not None:
        set_rng_state(rng_state)
    start_time = end = time.perf_counter()
    for iteration in range(start_iter + 1, max_iter + 1):
        try:
            images, targets, _ = next(data_iter)
        except StopIteration:
            raise RuntimeError(f"The training data loader ended after iteration {iteration - 1}; it must yield "
                               f"{max_iter - start_iter} batches (built with start_iter={start_iter})") from None
        data_time = time.perf_counter() - end
        images = images.to(device)
        targets = [t.to(device) for t in targets]

        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss_dict = model(images, targets)
        losses = sum(loss_dict.values())
        loss_dict_reduced = reduce_dict({k: v.detach().float() for k, v in loss_dict.items()})
        check_losses_finite(loss_dict_reduced, iteration)  # same verdict on every rank (all-reduced values)

        lr = optimizer.param_groups[0]["lr"]  # the lr of this update
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(losses).backward()
            if clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            losses.backward()
            if clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
        scheduler.step()
        arguments["iteration"] = iteration

        batch_time = time.perf_counter() - end
        end = time.perf_counter()
        meters.update(loss=sum(loss_dict_reduced.values()), **loss_dict_reduced)
        meters.update(time=batch_time, data=data_time)
        eta = format_eta(meters.time.global_avg * (max_iter - iteration))
        progress.update(iteration, f"loss {meters.loss.median:.4f}  lr {lr:.6f}  eta {eta}")
        if (log_period > 0 and iteration % log_period == 0) or iteration == max_iter:
            progress.clear()
            logger.info(meters.delimiter.join([f"eta: {eta}", f"iter: {iteration}/{max_iter}", str(meters),
                                               f"lr: {lr:.6f}", memory_usage_mb(device)]))
        if checkpoint_period > 0 and iteration % checkpoint_period == 0 and iteration != max_iter:
            checkpointer.save(f"model_{iteration:07d}", **arguments)
        if test_fn is not None and test_period > 0 and iteration % test_period == 0 and iteration != max_iter:
            progress.clear()
            state = get_rng_state()
            test_fn(iteration)
            set_rng_state(state)
            model.train()
            end = time.perf_counter()
    progress.close()
    if start_iter < max_iter or not checkpointer.has_checkpoint():
        checkpointer.save("model_final", **arguments)
    total = time.perf_counter() - start_time
    done = max(max_iter - start_iter, 1)
    logger.info("Total training time: %s (%.4f s / it)", format_eta(total), total / done)


# ---- number of classes ----------------------------------------------------------------------------
def _get_key(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def resolve_num_classes(cfg, num_foreground: int, dataset_desc: str):
    """Check (or fill in) the head's NUM_CLASSES against the training data's ``num_foreground`` classes.

    NUM_CLASSES == 0 -> set to ``num_foreground + 1`` (returns a new frozen cfg); a different value
    -> ``ValueError`` naming both numbers and ``dataset_desc``.
    """
    from maskrcnn_benchmark.modeling.dense_heads import num_classes_key

    key = num_classes_key(cfg)
    value = int(_get_key(cfg, key))
    expected = int(num_foreground) + 1
    if value == 0:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.merge_from_list([key, expected])
        cfg.freeze()
        return cfg
    if value != expected:
        raise ValueError(f"{key} = {value}, but the training data {dataset_desc} has {num_foreground} foreground "
                         f"classes, so it must be {expected} (foreground + 1 for background); set {key} "
                         f"{expected}, or 0 to take it from the data")
    return cfg


def training_num_foreground_classes(cfg) -> int:
    """Number of foreground classes of DATASETS.TRAIN (builds the datasets' indices)."""
    from maskrcnn_benchmark.data import get_dataset_num_classes

    return get_dataset_num_classes(cfg, is_train=True)


def fill_num_classes_from_data(cfg):
    """At test time: replace a NUM_CLASSES of 0 by the training data's count (other values are kept)."""
    from maskrcnn_benchmark.modeling.dense_heads import get_num_classes

    if get_num_classes(cfg) != 0:
        return cfg
    return resolve_num_classes(cfg, training_num_foreground_classes(cfg), f"DATASETS.TRAIN={list(cfg.DATASETS.TRAIN)}")


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
    from maskrcnn_benchmark.solver import make_lr_scheduler, make_optimizer
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
    if cfg.OUTPUT_DIR:
        mkdir(cfg.OUTPUT_DIR)
        save_config(cfg, os.path.join(cfg.OUTPUT_DIR, "config.yml"))

    device = torch.device(cfg.MODEL.DEVICE)
    model = build_detection_model(cfg).to(device)
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
    arguments = {"iteration": start_iter}
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
