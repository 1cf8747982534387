"""Dense detection heads, picked by name from the ``DENSE_HEADS`` registry.

Each entry is a builder ``build(cfg, in_channels) -> DenseHead`` (see ``base.DenseHead``: the one
pipeline flatten -> priors -> assign -> losses / predict -> post-process) whose
``forward(images: ImageList, features: list[Tensor], targets: list[BoxList] | None)`` returns
``(detections: list[BoxList] | None, losses: dict[str, Tensor])``.

A new head module in this folder registers itself with ``@DENSE_HEADS.register("NAME",
config_node="NODE", reads=(...))`` (``config_node``: the ``cfg.MODEL`` node holding its NUM_CLASSES,
default the name; ``reads``: the other nodes it reads). Every module of this package is imported
here (no list to extend), so the decorator is its only registration.
"""
import importlib
import pkgutil

from .registry import (DENSE_HEADS, build_dense_head, config_node,  # noqa: F401
                       fill_num_classes_from_data, get_num_classes, head_name, num_classes_key,
                       resolve_num_classes, set_num_classes)

__all__ = ["DENSE_HEADS", "head_name", "build_dense_head", "config_node", "num_classes_key",
           "get_num_classes", "set_num_classes", "resolve_num_classes",
           "fill_num_classes_from_data"]

# Registration happens on import: every module of the package, in name order.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
del _module
