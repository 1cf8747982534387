"""Dense detection heads, picked by name from the ``DENSE_HEADS`` registry.

Each entry is a builder ``build(cfg, in_channels) -> nn.Module`` whose
``forward(images: ImageList, features: list[Tensor], targets: list[BoxList] | None)`` returns
``(detections: list[BoxList] | None, losses: dict[str, Tensor])`` (see ``base.DenseHead``).

A new head module registers itself with ``@DENSE_HEADS.register("NAME")``, declares the config
node holding its ``NUM_CLASSES`` in ``HEAD_CONFIG_NODE`` (if it is not ``MODEL.<NAME>``), and
adds one import line at the bottom of this file.
"""
from __future__ import annotations

from typing import Dict

from maskrcnn_benchmark.utils.registry import Registry

__all__ = ["DENSE_HEADS", "HEAD_CONFIG_NODE", "head_name", "build_dense_head", "num_classes_key",
           "get_num_classes", "set_num_classes"]

DENSE_HEADS = Registry("DENSE_HEADS")

# Head name -> the ``cfg.MODEL`` node holding its keys (NUM_CLASSES, ...); default: the name.
HEAD_CONFIG_NODE: Dict[str, str] = {"ATSS": "ATSS", "DYNAMIC_ATSS": "ATSS"}

_LEGACY_FLAGS = (("ATSS_ON", "ATSS"), ("FCOS_ON", "FCOS"), ("RETINANET_ON", "RETINANET"))


def head_name(cfg) -> str:
    """``cfg.MODEL.HEAD`` if set, else the head named by the legacy ``*_ON`` flag."""
    if cfg.MODEL.HEAD:
        return cfg.MODEL.HEAD
    on = [name for flag, name in _LEGACY_FLAGS if getattr(cfg.MODEL, flag, False)]
    if len(on) == 1:
        return on[0]
    if not on:
        raise ValueError("no dense head selected: set MODEL.HEAD (one of "
                         f"{sorted(DENSE_HEADS.keys())}) or one legacy flag MODEL.ATSS_ON / "
                         "MODEL.FCOS_ON / MODEL.RETINANET_ON")
    raise ValueError(f"several legacy head flags are on ({on}); set exactly one or use MODEL.HEAD")


def build_dense_head(cfg, in_channels: int):
    """The dense head selected by :func:`head_name`, built for ``in_channels``-channel features."""
    return DENSE_HEADS[head_name(cfg)](cfg, in_channels)


def num_classes_key(cfg) -> str:
    """Dotted name of the ``NUM_CLASSES`` key the selected head reads, e.g. ``MODEL.ATSS.NUM_CLASSES``."""
    name = head_name(cfg)
    return f"MODEL.{HEAD_CONFIG_NODE.get(name, name)}.NUM_CLASSES"


def _head_node(cfg):
    key = num_classes_key(cfg)
    node = key.split(".")[1]
    if node not in cfg.MODEL or "NUM_CLASSES" not in cfg.MODEL[node]:
        raise KeyError(f"head {head_name(cfg)!r}: config key {key} does not exist")
    return cfg.MODEL[node]


def get_num_classes(cfg) -> int:
    """Value of :func:`num_classes_key` (foreground classes + 1; 0 = take it from the dataset)."""
    return int(_head_node(cfg).NUM_CLASSES)


def set_num_classes(cfg, value: int) -> None:
    """Sets :func:`num_classes_key` (``cfg`` must not be frozen)."""
    _head_node(cfg).NUM_CLASSES = int(value)


# Registration happens on import. (Other heads: append one line each.)
from . import atss  # noqa: E402,F401
from . import dynamic_atss  # noqa: E402,F401
from . import retinanet  # noqa: E402,F401
from . import free_anchor  # noqa: E402,F401
from . import fcos  # noqa: E402,F401
from . import autoassign  # noqa: E402,F401
