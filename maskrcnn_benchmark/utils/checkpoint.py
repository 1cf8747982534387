"""Checkpoints: atomic save of model / optimizer / scheduler / RNG state, resume, and weight loading.

Files in ``save_dir``: ``model_0002500.pth``..., ``model_final.pth`` and ``last_checkpoint`` (a text file
naming the newest checkpoint, relative to ``save_dir``). Every file is written atomically
(:mod:`maskrcnn_benchmark.utils.io`), so a crash while saving leaves the previous checkpoint and
``last_checkpoint`` intact.

Nothing is lost on a bad state: a checkpoint whose model holds NaN / inf is refused (not written);
only the newest ``keep`` periodic checkpoints are kept (``model_final`` and the one
``last_checkpoint`` names never go). On resume, an empty / garbage ``last_checkpoint``, or one
naming a missing or unreadable (e.g. truncated) file, falls back to the newest readable
checkpoint of ``save_dir`` with a warning naming what was wrong; when checkpoints exist but none
is readable, resuming stops with an error instead of starting over (and overwriting them).
"""
from __future__ import annotations

import logging
import os
import random
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from maskrcnn_benchmark.config.legacy import selected_head

from .c2_model_loading import (convert_c2_weights, convert_torchvision_resnet_weights, is_torchvision_resnet_state_dict,
                               load_c2_pickled_weights)
from .comm import all_gather, get_rank, is_main_process
from .io import atomic_torch_save, atomic_write_text
from .legacy_plus_one import rename_release_anchor_keys
from .mmdet_model_loading import convert_mmdet_weights, is_mmdet_state_dict

LAST_CHECKPOINT = "last_checkpoint"
_SOLVER_KEYS = ("optimizer", "scheduler", "scaler", "ema")  # restored in this order (scheduler after optimizer)
_PERIODIC = re.compile(r"^model_(\d+)\.pth$")


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


def load_pretrained_weights(path: str, stage_with_dcn: Optional[Sequence[bool]] = None
                            ) -> "OrderedDict[str, torch.Tensor]":
    """Read local pretrained weights as a state dict in our names.

    ``.pkl``: caffe2/Detectron blobs (converted, :mod:`~maskrcnn_benchmark.utils.c2_model_loading`).
    Otherwise ``torch.load``: an mmdetection detector (:mod:`~maskrcnn_benchmark.utils.mmdet_model_loading`)
    or a torchvision-style ResNet state dict is converted; anything else (e.g. our own checkpoint, or a dict holding it under "model" / "state_dict"; the EMA weights
    under "ema" when present) is returned as is. ``stage_with_dcn`` (MODEL.RESNETS.
    STAGE_WITH_DCN) moves ImageNet conv2 weights into the DFConv2d ``conv`` submodule.
    """
    if path.endswith(".pkl"):
        return convert_c2_weights(load_c2_pickled_weights(path), stage_with_dcn)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated, not a torch file, or objects weights_only refuses
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = "empty file" if os.path.getsize(path) == 0 else first
        hint = ""
        if "mmengine" in str(e) or "mmcv" in str(e):
            hint = (" It looks like an mmengine training checkpoint, whose training state holds objects that "
                    "are not loaded for safety; keep only its weights, for a file you trust: python -c \"import "
                    "torch; torch.save({'state_dict': torch.load('IN.pth', weights_only=False)['state_dict']}, "
                    "'OUT.pth')\"")
        raise ValueError(f"cannot read weight file {path} ({detail}): expected a checkpoint / state dict "
                         f"saved with torch.save, or a Detectron .pkl.{hint}") from None
    ema = data.get("ema") if isinstance(data, dict) else None
    if isinstance(ema, dict) and isinstance(ema.get("model"), dict):  # our checkpoint, trained with EMA
        logging.getLogger(__name__).info("%s holds EMA weights (SOLVER.EMA_DECAY %s, %s updates): loading "
                                         "those, not the raw weights", path, ema.get("decay"), ema.get("updates"))
        data = ema
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, Mapping) or not any(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"weight file {path} holds {type(data).__name__}"
                         f"{' without tensors' if isinstance(data, Mapping) else ''}, not a state dict "
                         f"(a dict of parameter name -> tensor, possibly under 'model' / 'state_dict')")
    data = OrderedDict((k, v) for k, v in data.items() if isinstance(v, torch.Tensor))
    data = rename_release_anchor_keys(data)  # the releases' anchor_generator.cell_anchors -> ours
    if is_mmdet_state_dict(data):
        logging.getLogger(__name__).info("%s: an mmdetection checkpoint (backbone / neck / bbox_head): names "
                                         "converted", path)
        return convert_mmdet_weights(data)
    if is_torchvision_resnet_state_dict(data):
        return convert_torchvision_resnet_weights(data, stage_with_dcn=stage_with_dcn)
    return data


def load_weight_file(path: str, stage_with_dcn: Optional[Sequence[bool]] = None) -> Dict[str, torch.Tensor]:
    """State dict in our names from ``path``: our checkpoints (``{"model": ...}``; the EMA weights
    ``{"ema": {"model": ...}}`` when the checkpoint has them), plain state dicts, torchvision ResNets
    and Detectron ``.pkl`` files (see :func:`load_pretrained_weights`)."""
    return load_pretrained_weights(resolve_weight_path(path), stage_with_dcn)


def load_model_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], min_match: float = 0.0,
                       source: str = "the weights", allow_class_change: bool = False,
                       require_all: bool = False) -> None:
    """Load ``state_dict`` into ``model`` by name suffix (``load_state_dict_flexible``: maps the original
    maskrcnn-benchmark names, errors on shape mismatches, logs what was skipped).

    ``allow_class_change`` (training from MODEL.WEIGHT): the class-dependent predictors of a checkpoint
    with another number of classes are not loaded (logged, they keep their initialisation); every other
    shape mismatch stays an error. They count as matched for ``min_match``.

    ``min_match`` (MODEL.WEIGHT_MIN_MATCH): least share of ``state_dict``'s tensors that must load;
    fewer (or none at all, when ``min_match`` > 0) raises ``ValueError`` naming ``source`` and listing
    the tensors that matched nothing. 0 accepts anything.

    ``require_all`` (inference: test_net, the Predictor, export): every model tensor must come from
    ``state_dict``; missing ones raise ``UserInputError`` naming them (a randomly initialised branch
    would be evaluated). Otherwise (training from partial weights) they are named in a warning.
    Tensors holding NaN / inf are always refused (``UserInputError`` naming them).
    """
    from .errors import UserInputError
    from .model_serialization import load_state_dict_flexible

    check_finite_weights(state_dict, source)
    report = load_state_dict_flexible(unwrap_model(model), state_dict, allow_class_change=allow_class_change)
    used = len(set(report.matched.values())) + len(report.skipped)
    total = len(state_dict)
    share = used / total if total else 0.0
    if min_match > 0 and (used == 0 or share < min_match):
        unused = report.unused
        listed = ", ".join(unused[:20]) + (f", ... ({len(unused) - 20} more)" if len(unused) > 20 else "")
        raise ValueError(
            f"{source}: only {used} of its {total} tensors ({share:.0%}) match the model's parameter names, "
            f"below MODEL.WEIGHT_MIN_MATCH {min_match:g}: is it the right file for this model? Not matched: "
            f"{listed}. Model keys look like: {', '.join(report.missing[:3])}. To fine-tune from it anyway, "
            f"set MODEL.WEIGHT_MIN_MATCH 0")
    if report.missing and require_all:
        raise UserInputError(f"{source}: {len(report.missing)} of the model's tensors are not in it "
                             f"({_listed(report.missing)}); for inference every tensor must come from the weight "
                             f"file (is it a checkpoint of this model, or a backbone-only / partial file?)")
    if report.missing and used:
        logging.getLogger("maskrcnn_benchmark.checkpoint").warning(
            "%s: %d model tensor(s) are not in it and keep their initialisation: %s", source,
            len(report.missing), _listed(report.missing, 20))
    if used == 0:
        logging.getLogger("maskrcnn_benchmark.checkpoint").warning(
            "%s: none of its %d tensors matched the model (MODEL.WEIGHT_MIN_MATCH 0): the model keeps its "
            "initialisation", source, total)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)`` keeping the current hyperparameters of every param group.

    The per-parameter state (SGD momentum buffers) comes from ``state``; ``lr``, ``initial_lr``,
    ``weight_decay``, ``momentum``, ... stay those the optimizer was built with (the config in force;
    the scheduler then sets the lr of the resumed iteration). ``ValueError`` (from torch) when the
    param groups do not correspond (another model or parameter grouping).
    """
    current = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, hyper in zip(optimizer.param_groups, current):
        group.update(hyper)


def nonfinite_tensors(state_dict: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold NaN or inf (one host
    synchronisation when all are finite)."""
    floats = [(k, v) for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not floats or bool(torch.stack([torch.isfinite(v).all() for _, v in floats]).all()):
        return []
    return [k for k, v in floats if not bool(torch.isfinite(v).all())]


def _listed(names: Sequence[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_finite_state(state_dict: Dict[str, torch.Tensor], what: str) -> None:
    """Raise ``FloatingPointError`` naming the floating-point tensors of ``state_dict`` that hold NaN/inf."""
    bad = nonfinite_tensors(state_dict)
    if bad:
        raise FloatingPointError(f"refusing to write {what}: {len(bad)} model tensor(s) hold NaN or inf "
                                 f"({_listed(bad)}); the previous checkpoint is kept")


def check_finite_weights(state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """``UserInputError`` naming the tensors of loaded weights ``source`` that hold NaN or inf."""
    from .errors import UserInputError

    bad = nonfinite_tensors(state_dict)
    if bad:
        raise UserInputError(f"{source}: {len(bad)} tensor(s) hold NaN or inf ({_listed(bad)}); a model with "
                             f"them would give no usable detections. Use an earlier checkpoint")


def checkpoint_metadata(path: str) -> Dict[str, Any]:
    """The non-tensor entries of one of this project's ``.pth`` checkpoints (``{}`` for other formats):
    ``iteration``, ``class_names``, ``config`` (the yaml of the run that saved it), ...

    Memory-maps the file, so the weights are not read twice."""
    if not path or not path.endswith(".pth") or not os.path.isfile(path):
        return {}
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a legacy (non-zip) file: its weights still load through the Checkpointer
        logging.getLogger(__name__).debug("cannot memory-map %s for metadata: %s", path, e)
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k not in ("model",) + _SOLVER_KEYS + ("rng_states",)}


def model_identity(cfg) -> Dict[str, str]:
    """What a checkpoint must have been trained as to load into the model of ``cfg``:
    ``{"MODEL.META_ARCHITECTURE", "MODEL.HEAD" (the resolved head), "MODEL.BACKBONE.CONV_BODY"}``;
    empty entries for keys a (foreign or old) config lacks."""
    model = cfg.get("MODEL", {}) if hasattr(cfg, "get") else {}
    try:
        head = selected_head(cfg)
    except (AttributeError, KeyError, ValueError):
        head = ""
    return {"MODEL.META_ARCHITECTURE": str(model.get("META_ARCHITECTURE", "")), "MODEL.HEAD": str(head),
            "MODEL.BACKBONE.CONV_BODY": str(model.get("BACKBONE", {}).get("CONV_BODY", ""))}


def identity_mismatches(saved_config: Any, expected: Dict[str, str]) -> List[str]:
    """``["MODEL.HEAD: checkpoint FCOS, config DYNAMIC_ATSS", ...]`` for every entry of ``expected``
    (:func:`model_identity` of the config in force) that the checkpoint's stored config
    (``saved_config``: its ``"config"`` yaml text) names differently; [] when it stores none."""
    if not isinstance(saved_config, str) or not expected:
        return []
    from yacs.config import CfgNode

    try:
        saved = model_identity(CfgNode.load_cfg(saved_config))
    except Exception:  # noqa: BLE001 - an unreadable stored config cannot be compared
        return []
    return [f"{key}: checkpoint {saved[key]}, config {value}" for key, value in expected.items()
            if saved.get(key) and value and saved[key] != value]


def read_checkpoint(path: str) -> Dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of one of our checkpoints; ``ValueError`` naming the file
    when it is unreadable (empty, truncated) or not a checkpoint (no ``"model"`` entry)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        detail = "empty file" if os.path.getsize(path) == 0 else (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}: {detail})") from None
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError(f"{path} is not a training checkpoint (no 'model' entry; holds {type(data).__name__})")
    return data


class Checkpointer:
    """Save / resume the training state of ``model`` (and optimizer, scheduler, AMP grad scaler, EMA).

    Args:
        model: the model (a DDP wrapper is unwrapped).
        optimizer, scheduler, scaler, ema: optional objects with ``state_dict`` / ``load_state_dict``
            (``ema``: :class:`~maskrcnn_benchmark.solver.ema.ModelEMA`, saved under the key "ema").
        save_dir: folder of the checkpoints ("" disables saving).
        save_to_disk: write files (default: only on the main process).
        logger: where to report; defaults to ``maskrcnn_benchmark.checkpoint``.
        keep: periodic checkpoints (``model_<iteration>.pth``) to keep, newest first (SOLVER.CHECKPOINT_KEEP);
            0 keeps all. ``model_final`` and the file ``last_checkpoint`` names are never deleted.
    """

    def __init__(self, model: nn.Module, optimizer=None, scheduler=None, save_dir: str = "",
                 save_to_disk: Optional[bool] = None, logger: Optional[logging.Logger] = None, scaler=None,
                 keep: int = 0, ema=None):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.ema = ema
        self.save_dir = save_dir
        self.save_to_disk = is_main_process() if save_to_disk is None else save_to_disk
        self.logger = logger or logging.getLogger("maskrcnn_benchmark.checkpoint")
        self.keep = int(keep)

    # ---- saving -------------------------------------------------------------------------
    def save(self, name: str, **extra: Any) -> Optional[str]:
        """Atomically write ``save_dir/name.pth`` (model, solver state, RNG state and ``extra``),
        then point ``last_checkpoint`` at it and delete periodic checkpoints beyond ``keep``.
        Returns the path (None when not saving).

        Raises:
            FloatingPointError: the model holds NaN/inf (checked on every rank; nothing is written).
        """
        if not self.save_dir:
            return None
        model_state = unwrap_model(self.model).state_dict()
        check_finite_state(model_state, f"checkpoint {name}.pth")  # same verdict on every (replica) rank
        rng_states = all_gather(get_rng_state())  # collective: every rank calls save()
        if not self.save_to_disk:
            return None
        data: Dict[str, Any] = {"model": model_state}
        for key in _SOLVER_KEYS:
            obj = getattr(self, key)
            if obj is not None:
                data[key] = obj.state_dict()
        data["rng_states"] = rng_states  # one per rank
        data.update(extra)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", path)
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(path)
        self.prune(keep_name=os.path.basename(path))
        return path

    def prune(self, keep_name: str = "") -> List[str]:
        """Delete the periodic checkpoints older than the newest ``self.keep`` (never ``keep_name``,
        the file ``last_checkpoint`` names, nor ``model_final``); returns the deleted paths."""
        if self.keep <= 0 or not self.save_dir or not self.save_to_disk:
            return []
        protected = {keep_name, os.path.basename(self.get_checkpoint_file() or "")}
        periodic = [p for p in self.checkpoint_files() if _PERIODIC.match(os.path.basename(p))]
        deleted = []
        for path in periodic[self.keep:]:  # newest first
            if os.path.basename(path) in protected:
                continue
            try:
                os.remove(path)
            except OSError as e:
                self.logger.warning("could not delete old checkpoint %s: %s", path, e)
                continue
            deleted.append(path)
        if deleted:
            self.logger.info("Deleted %d old checkpoint(s) (SOLVER.CHECKPOINT_KEEP %d): %s", len(deleted),
                             self.keep, ", ".join(os.path.basename(p) for p in deleted))
        return deleted

    def tag_last_checkpoint(self, path: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, LAST_CHECKPOINT), os.path.basename(path) + "\n")

    # ---- resuming -----------------------------------------------------------------------
    def checkpoint_files(self) -> List[str]:
        """Checkpoints in ``save_dir``, newest first: ``model_final.pth``, then ``model_<iteration>.pth``
        by decreasing iteration."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        names = os.listdir(self.save_dir)
        periodic = sorted((n for n in names if _PERIODIC.match(n)), key=lambda n: int(_PERIODIC.match(n).group(1)),
                          reverse=True)
        final = ["model_final.pth"] if "model_final.pth" in names else []
        return [os.path.join(self.save_dir, n) for n in final + periodic]

    def has_checkpoint(self) -> bool:
        """``save_dir`` has a ``last_checkpoint`` file or any ``model_*.pth`` checkpoint."""
        return bool(self.save_dir) and (os.path.exists(os.path.join(self.save_dir, LAST_CHECKPOINT))
                                        or bool(self.checkpoint_files()))

    def _read_last_checkpoint_file(self) -> Tuple[str, Optional[str]]:
        """``(path named by last_checkpoint or "", what is wrong with it or None)``."""
        tag = os.path.join(self.save_dir, LAST_CHECKPOINT)
        if not self.save_dir or not os.path.exists(tag):
            return "", None
        try:
            with open(tag, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            return "", f"{tag} cannot be read ({type(e).__name__}: {e})"
        name = text.strip()
        if not name:
            return "", f"{tag} is empty"
        if "\n" in name or "\x00" in name or not name.endswith(".pth"):
            return "", f"{tag} does not name a checkpoint file (it holds {text[:60]!r})"
        path = name if os.path.isabs(name) else os.path.join(self.save_dir, name)
        if not os.path.isfile(path):
            return path, f"{tag} names {path!r}, which does not exist"
        return path, None

    def get_checkpoint_file(self) -> str:
        """Path of the newest checkpoint named by ``last_checkpoint`` ("" if there is none or it is unreadable)."""
        return self._read_last_checkpoint_file()[0]

    def read_last(self) -> Optional[Dict[str, Any]]:
        """The content of the newest readable checkpoint of ``save_dir`` (None if there is none).

        Tried in order: the file ``last_checkpoint`` names, then :meth:`checkpoint_files` (newest
        first). Each problem (bad ``last_checkpoint``, a missing / truncated / non-checkpoint file)
        is logged as a warning naming the file before falling back to the next one.

        Raises:
            FileNotFoundError: ``last_checkpoint`` names a missing file and there is no other checkpoint.
            RuntimeError: checkpoints exist but none is readable (listing them); training does not
                start from iteration 0 over them.
        """
        if not self.save_dir:
            return None
        named, problem = self._read_last_checkpoint_file()
        if problem:
            self.logger.warning("%s; looking for the newest readable checkpoint in %s", problem, self.save_dir)
        candidates = [named] if named else []
        candidates += [p for p in self.checkpoint_files() if os.path.abspath(p) not in map(os.path.abspath, candidates)]
        failures = []
        for path in candidates:
            if not os.path.isfile(path):
                failures.append(f"{path} (does not exist)")
                continue
            try:
                data = read_checkpoint(path)
            except ValueError as e:
                self.logger.warning("%s; falling back to the next newest checkpoint", e)
                failures.append(str(e))
                continue
            if problem or failures:
                self.logger.warning("Resuming from %s, the newest readable checkpoint", path)
            else:
                self.logger.info("Resuming from checkpoint %s", path)
            return data
        if failures and all(f.endswith("(does not exist)") for f in failures):
            raise FileNotFoundError(f"{problem}, and {self.save_dir} holds no other checkpoint; delete "
                                    f"{os.path.join(self.save_dir, LAST_CHECKPOINT)} to start afresh")
        if failures:
            raise RuntimeError(f"{self.save_dir} has checkpoints but none is readable, so training cannot "
                               f"resume (and will not start over them):\n  " + "\n  ".join(failures) +
                               "\nMove them away (or use another OUTPUT_DIR) to start from iteration 0.")
        return None

    def restore(self, data: Dict[str, Any]) -> Dict[str, Any]:
        """Load model / optimizer / scheduler / scaler / EMA state from checkpoint content ``data``;
        returns the other entries (``iteration``, ``rng_states``, ``config``, ...; also "ema" when this
        checkpointer has no ``ema``).

        The rule for a changed config: the checkpoint gives the *state* (weights, optimizer momentum
        buffers, the scheduler's position, grad-scaler scale, EMA weights), the objects built from the
        config in force give the *hyperparameters*: every optimizer param group keeps its current lr,
        weight decay, momentum, ... (:func:`load_optimizer_state`), and the scheduler keeps its
        milestones / warmup / base lrs (``WarmupMultiStepLR.load_state_dict`` takes only the position).
        """
        data = dict(data)
        check_finite_weights(data["model"], f"the checkpoint to resume in {self.save_dir or 'save_dir'}")
        unwrap_model(self.model).load_state_dict(data.pop("model"))
        for key in _SOLVER_KEYS:
            obj = getattr(self, key)
            if obj is None:
                continue
            state = data.pop(key, None)
            if state is None:
                if key == "ema":
                    self.logger.warning("the checkpoint has no EMA weights (SOLVER.EMA_DECAY was 0 when it was "
                                        "saved): the average starts from the restored weights")
                    obj.load_state_dict({"model": unwrap_model(self.model).state_dict(), "updates": 0})
                continue
            if key == "optimizer":
                load_optimizer_state(obj, state)
            else:
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

    def load_weights(self, path: str, stage_with_dcn: Optional[Sequence[bool]] = None,
                     min_match: float = 0.5, allow_class_change: bool = False,
                     identity: Optional[Dict[str, str]] = None, for_inference: bool = False,
                     state_dict: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """Load model weights only (fine-tuning / testing); the solver state is not touched.

        One of our checkpoints with EMA weights (an "ema" entry) gives those (:func:`load_weight_file`).
        ``stage_with_dcn``: MODEL.RESNETS.STAGE_WITH_DCN, to map ImageNet conv2 weights into DCN layers.
        ``min_match``: MODEL.WEIGHT_MIN_MATCH (see :func:`load_model_weights`).
        ``allow_class_change``: fine-tuning to another class count (see :func:`load_model_weights`).
        ``identity``: :func:`model_identity` of the config in force; one of our checkpoints whose stored
        config names another architecture, head or backbone is refused naming both (in training with
        ``min_match`` 0 only a warning). ``for_inference``: every model tensor must be loaded
        (``require_all`` of :func:`load_model_weights`).
        ``state_dict``: the content of ``path`` already read by :func:`load_weight_file` (not read again).
        Raises FileNotFoundError naming ``path`` when it does not exist, ValueError when it is not a
        weight file, holds NaN / inf, is of another model, or too few of its tensors match the model."""
        if not path:
            return
        from .errors import UserInputError

        self.logger.info("Loading weights from %s", path)
        source = f"MODEL.WEIGHT {path}"
        mismatches = identity_mismatches(checkpoint_metadata(resolve_weight_path(path)).get("config"), identity or {})
        if mismatches:
            msg = (f"{source} was trained as another model ({'; '.join(mismatches)}): its tensors would load "
                   f"into the wrong layers")
            if for_inference or min_match > 0:
                raise UserInputError(msg + ("; to fine-tune from it anyway, set MODEL.WEIGHT_MIN_MATCH 0"
                                            if not for_inference else ""))
            self.logger.warning("%s; loading it anyway (MODEL.WEIGHT_MIN_MATCH 0)", msg)
        if state_dict is None:
            state_dict = load_weight_file(path, stage_with_dcn)
        load_model_weights(self.model, state_dict, min_match, source=source,
                           allow_class_change=allow_class_change, require_all=for_inference)

    def load(self, weight: str = "", use_latest: bool = True,
             stage_with_dcn: Optional[Sequence[bool]] = None, min_match: float = 0.5) -> Dict[str, Any]:
        """Resume from ``save_dir`` when it has a checkpoint (and ``use_latest``), else load ``weight``."""
        if use_latest and self.has_checkpoint():
            return self.resume()
        if weight:
            self.load_weights(weight, stage_with_dcn, min_match)
        else:
            self.logger.info("No checkpoint found and MODEL.WEIGHT is empty: training from initialisation")
        return {}


DetectronCheckpointer = Checkpointer  # name used by the original code
