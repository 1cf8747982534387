"""Checkpoints: atomic save of model / optimizer / scheduler / RNG state, resume, and weight loading.

Files in ``save_dir``: ``model_0002500.pth``..., ``model_final.pth`` and ``last_checkpoint`` (a text file
naming the newest checkpoint, relative to ``save_dir``). Every file is written atomically
(:mod:`maskrcnn_benchmark.utils.io`), so a crash while saving leaves the previous checkpoint and
``last_checkpoint`` intact.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .comm import all_gather, get_rank, is_main_process
from .io import atomic_torch_save, atomic_write_text

LAST_CHECKPOINT = "last_checkpoint"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, or ``model`` itself."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def get_rng_state() -> Dict[str, Any]:
    """Snapshot of the python, numpy and torch (CPU and CUDA) random generators, made only of
    tensors / tuples / numbers so checkpoints load with ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore a snapshot taken by :func:`get_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def select_rng_state(extra: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """This rank's RNG snapshot from a resumed checkpoint (``rng_states[rank]``; wraps around if the
    world size changed), or None."""
    states = extra.get("rng_states")
    if not states:
        return None
    return states[get_rank() % len(states)]


def resolve_weight_path(path: str) -> str:
    """Local file of MODEL.WEIGHT: ``catalog://Name`` via ``ModelCatalog`` (under
    ``$MASKRCNN_BENCHMARK_MODELS``), else the path itself. FileNotFoundError naming it if missing."""
    if path.startswith("catalog://"):
        from maskrcnn_benchmark.config.paths_catalog import ModelCatalog

        return ModelCatalog.get(path)
    resolved = os.path.expanduser(path)
    if not os.path.isfile(resolved):
        raise FileNotFoundError(f"MODEL.WEIGHT: weight file not found: {path!r}")
    return resolved


def load_weight_file(path: str, stage_with_dcn: Optional[Sequence[bool]] = None) -> Dict[str, torch.Tensor]:
    """State dict in our names from ``path``: our checkpoints (``{"model": ...}``), plain state dicts,
    torchvision ResNets and Detectron ``.pkl`` files (see :mod:`c2_model_loading`)."""
    from .c2_model_loading import load_pretrained_weights

    return load_pretrained_weights(resolve_weight_path(path), stage_with_dcn)


def load_model_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> None:
    """Load ``state_dict`` into ``model`` by name suffix (``load_state_dict_flexible``: maps the original
    maskrcnn-benchmark names, errors on shape mismatches, logs what was skipped)."""
    from .model_serialization import load_state_dict_flexible

    load_state_dict_flexible(unwrap_model(model), state_dict)


class Checkpointer:
    """Save / resume the training state of ``model`` (and optimizer, scheduler, AMP grad scaler).

    Args:
        model: the model (a DDP wrapper is unwrapped).
        optimizer, scheduler, scaler: optional objects with ``state_dict`` / ``load_state_dict``.
        save_dir: folder of the checkpoints ("" disables saving).
        save_to_disk: write files (default: only on the main process).
        logger: where to report; defaults to ``maskrcnn_benchmark.checkpoint``.
    """

    def __init__(self, model: nn.Module, optimizer=None, scheduler=None, save_dir: str = "",
                 save_to_disk: Optional[bool] = None, logger: Optional[logging.Logger] = None, scaler=None):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.save_dir = save_dir
        self.save_to_disk = is_main_process() if save_to_disk is None else save_to_disk
        self.logger = logger or logging.getLogger("maskrcnn_benchmark.checkpoint")

    # ---- saving -------------------------------------------------------------------------
    def save(self, name: str, **extra: Any) -> Optional[str]:
        """Atomically write ``save_dir/name.pth`` (model, solver state, RNG state and ``extra``),
        then point ``last_checkpoint`` at it. Returns the path (None when not saving)."""
        if not self.save_dir:
            return None
        rng_states = all_gather(get_rng_state())  # collective: every rank calls save()
        if not self.save_to_disk:
            return None
        data: Dict[str, Any] = {"model": unwrap_model(self.model).state_dict()}
        for key in ("optimizer", "scheduler", "scaler"):
            obj = getattr(self, key)
            if obj is not None:
                data[key] = obj.state_dict()
        data["rng_states"] = rng_states  # one per rank
        data.update(extra)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", path)
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(path)
        return path

    def tag_last_checkpoint(self, path: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, LAST_CHECKPOINT), os.path.basename(path) + "\n")

    # ---- resuming -----------------------------------------------------------------------
    def has_checkpoint(self) -> bool:
        return bool(self.save_dir) and os.path.exists(os.path.join(self.save_dir, LAST_CHECKPOINT))

    def get_checkpoint_file(self) -> str:
        """Path of the newest checkpoint named by ``last_checkpoint`` ("" if there is none)."""
        if not self.has_checkpoint():
            return ""
        with open(os.path.join(self.save_dir, LAST_CHECKPOINT), encoding="utf-8") as f:
            name = f.read().strip()
        if not name:
            return ""
        return name if os.path.isabs(name) else os.path.join(self.save_dir, name)

    def read_last(self) -> Optional[Dict[str, Any]]:
        """The raw content of the last checkpoint of ``save_dir`` (None if there is none)."""
        path = self.get_checkpoint_file()
        if not path:
            return None
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{os.path.join(self.save_dir, LAST_CHECKPOINT)} names {path!r}, "
                                    f"which does not exist")
        self.logger.info("Resuming from checkpoint %s", path)
        return torch.load(path, map_location="cpu", weights_only=True)

    def restore(self, data: Dict[str, Any]) -> Dict[str, Any]:
        """Load model / optimizer / scheduler / scaler state from checkpoint content ``data``;
        returns the other entries (``iteration``, ``rng_states``, ...)."""
        data = dict(data)
        unwrap_model(self.model).load_state_dict(data.pop("model"))
        for key in ("optimizer", "scheduler", "scaler"):
            obj, state = getattr(self, key), data.pop(key, None)
            if obj is not None and state is not None:
                obj.load_state_dict(state)
        return data

    def resume(self) -> Dict[str, Any]:
        """Restore model and solver state from the last checkpoint of ``save_dir``.

        Returns the remaining entries of the checkpoint (``iteration``, ``rng_states``, ...), or ``{}``
        when there is no checkpoint. The caller restores the RNG state (:func:`select_rng_state`,
        ``do_train``).
        """
        data = self.read_last()
        return {} if data is None else self.restore(data)

    def load_weights(self, path: str, stage_with_dcn: Optional[Sequence[bool]] = None) -> None:
        """Load model weights only (fine-tuning / testing); the solver state is not touched.

        ``stage_with_dcn``: MODEL.RESNETS.STAGE_WITH_DCN, to map ImageNet conv2 weights into DCN layers.
        Raises FileNotFoundError naming ``path`` when it does not exist."""
        if not path:
            return
        self.logger.info("Loading weights from %s", path)
        load_model_weights(self.model, load_weight_file(path, stage_with_dcn))

    def load(self, weight: str = "", use_latest: bool = True,
             stage_with_dcn: Optional[Sequence[bool]] = None) -> Dict[str, Any]:
        """Resume from ``save_dir`` when it has a checkpoint (and ``use_latest``), else load ``weight``."""
        if use_latest and self.has_checkpoint():
            return self.resume()
        if weight:
            self.load_weights(weight, stage_with_dcn)
        else:
            self.logger.info("No checkpoint found and MODEL.WEIGHT is empty: training from initialisation")
        return {}


DetectronCheckpointer = Checkpointer  # name used by the original code
