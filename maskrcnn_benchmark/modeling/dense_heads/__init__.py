"""Dense detection heads, picked by name from the ``DENSE_HEADS`` registry.

Each entry is a builder ``build(cfg, in_channels) -> DenseHead`` (see ``base.DenseHead``: the one
pipeline flatten -> priors -> assign -> losses / predict -> post-process) whose
``forward(images: ImageList, features: list[Tensor], targets: list[BoxList] | None)`` returns
``(detections: list[BoxList] | None, losses: dict[str, Tensor])``.

A new head module registers itself with ``@DENSE_HEADS.register("NAME", config_node="NODE")``
(``config_node``: the ``cfg.MODEL`` node holding its NUM_CLASSES, default the name) and adds one
import line at the bottom of this file.
"""
from .registry import (DENSE_HEADS, build_dense_head, config_node,  # noqa: F401
                       fill_num_classes_from_data, get_num_classes, head_name, num_classes_key,
                       resolve_num_classes, set_num_classes)

__all__ = ["DENSE_HEADS", "head_name", "build_dense_head", "config_node", "num_classes_key",
           "get_num_classes", "set_num_classes", "resolve_num_classes",
           "fill_num_classes_from_data"]

# Registration happens on import. (Other heads: append one line each.)
from . import atss  # noqa: E402,F401
from . import dynamic_atss  # noqa: E402,F401
from . import retinanet  # noqa: E402,F401
from . import free_anchor  # noqa: E402,F401
from . import fcos  # noqa: E402,F401
from . import autoassign  # noqa: E402,F401
