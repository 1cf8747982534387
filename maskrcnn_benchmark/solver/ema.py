"""Exponential moving average of the model weights (``SOLVER.EMA_DECAY``), as YOLOX's ``ModelEMA`` /
mmdetection's ``ExpMomentumEMA`` without the decay warm-up.

After every optimizer step, for every floating-point parameter **and buffer** ``w`` of the model and
its average ``ema``::

    ema = decay * ema + (1 - decay) * w

computed as ``ema + (1 - decay) * (w - ema)`` (``torch.lerp``: the same value up to rounding, and
exactly ``w`` when ``w == ema``, so frozen tensors such as FrozenBatchNorm statistics stay
bit-identical). Integer buffers (e.g. ``num_batches_tracked``) are copied. The average starts as a
copy of the model when :class:`ModelEMA` is built.
"""
from __future__ import annotations

import copy
from typing import Any, Dict

import torch
from torch import nn

__all__ = ["ModelEMA"]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class ModelEMA:
    """The averaged copy of a model.

    Args:
        model: the trained model (a DDP wrapper is unwrapped); the average starts as a deep copy of it,
            on the same device, in eval mode, without gradients.
        decay: in [0, 1); the weight of the old average in each update (e.g. 0.9998).

    Attributes:
        model: the averaged ``nn.Module`` (evaluate it like the trained model).
        updates: number of :meth:`update` calls so far (saved in checkpoints).
    """

    def __init__(self, model: nn.Module, decay: float):
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"SOLVER.EMA_DECAY must be in [0, 1) (0: no EMA), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(_unwrap(model)).eval()
        self.model.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema = decay * ema + (1 - decay) * w`` for every floating-point tensor of ``model``'s state
        (parameters and buffers, matched by name); integer buffers copied."""
        source = _unwrap(model).state_dict()
        target = self.model.state_dict()
        avg, new = [], []
        for name, ema_t in target.items():
            w = source[name].detach()
            if ema_t.is_floating_point():
                avg.append(ema_t)
                new.append(w.to(ema_t.dtype))
            else:
                ema_t.copy_(w)
        if avg:
            torch._foreach_lerp_(avg, new, 1.0 - self.decay)
        self.updates += 1

    def state_dict(self) -> Dict[str, Any]:
        """``{"model": averaged state dict, "updates": int, "decay": float}`` (saved as a checkpoint's "ema")."""
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the average and the update count exactly (the decay in force stays ``self.decay``)."""
        if not isinstance(state, dict) or "model" not in state:
            raise ValueError("EMA state must be a dict with a 'model' state dict (a checkpoint's 'ema' entry)")
        self.model.load_state_dict(state["model"])
        self.updates = int(state.get("updates", 0))
