"""The dense-head registry and the ``NUM_CLASSES`` helpers built on it.

A head registers its builder with the config node that holds its keys (NUM_CLASSES and the
inference keys) and the other nodes it reads (shared prior / assignment / loss keys)::

    @DENSE_HEADS.register("FREEANCHOR", config_node="RETINANET", reads=("FREEANCHOR",))
    def build_free_anchor(cfg, in_channels): ...

(``config_node`` defaults to the head name, i.e. ``cfg.MODEL.<NAME>``.) A new head declares its
node's defaults in its own module and passes them as ``defaults=``: they become ``cfg.MODEL.<NODE>``
of the default config when the module is imported (:func:`~maskrcnn_benchmark.config.registration.
register_config_node`), so ``config/defaults.py`` needs no entry::

    GFL_DEFAULTS = CfgNode()
    GFL_DEFAULTS.NUM_CLASSES = 81  # (each key commented, as in defaults.py)
    ...
    @DENSE_HEADS.register("GFL", config_node="GFL", reads=("ATSS",), defaults=GFL_DEFAULTS)
    def build_gfl(cfg, in_channels): ...

(The six original heads' nodes stay in ``defaults.py``.) A builder returns a
:class:`~.base.DenseHead`, whose construction checks the conv module against the
:class:`~.base.DenseConvHead` contract.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

from maskrcnn_benchmark.config.legacy import selected_head
from maskrcnn_benchmark.config.registration import register_config_node
from maskrcnn_benchmark.utils.registry import Registry

__all__ = ["HeadRegistry", "DENSE_HEADS", "head_name", "build_dense_head",
           "config_node",
           "num_classes_key", "get_num_classes", "set_num_classes", "resolve_num_classes",
           "fill_num_classes_from_data"]


class HeadRegistry(Registry):
    """A :class:`Registry` whose entries also declare their config node (``cfg.MODEL.<node>``)
    and the other ``cfg.MODEL`` nodes they read (``nodes_read``: the head's own first)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.config_nodes: Dict[str, str] = {}
        self.nodes_read: Dict[str, Tuple[str, ...]] = {}

    def register(self, key: str, config_node: Optional[str] = None,
                 reads: Tuple[str, ...] = (), defaults=None) -> Callable:
        """Decorator registering a builder ``fn(cfg, in_channels) -> DenseHead`` as ``key``.

        Args:
            config_node: the ``cfg.MODEL`` node of the head's keys (default ``key``).
            reads: the other ``cfg.MODEL`` nodes the builder reads.
            defaults: the node's default keys (a ``CfgNode`` / mapping) declared by the head's
                module: registered as ``cfg.MODEL.<config_node>`` of the default config
                (:func:`~maskrcnn_benchmark.config.registration.register_config_node`, with the
                builder's module as the owner) before the builder; None: the node is a key of
                ``config/defaults.py``.
        """
        node = config_node or key
        deco = super().register(key)

        def register_with_node(fn):
            if defaults is not None:
                register_config_node(f"MODEL.{node}", defaults, owner=fn.__module__)
            fn = deco(fn)
            self.config_nodes[key] = node
            self.nodes_read[key] = tuple(dict.fromkeys((node,) + tuple(reads)))
            return fn
        return register_with_node


DENSE_HEADS = HeadRegistry("DENSE_HEADS")


def head_name(cfg) -> str:
    """``cfg.MODEL.HEAD`` if set, else the head named by the legacy ``*_ON`` flag
    (:func:`~maskrcnn_benchmark.config.legacy.selected_head`; its error lists the registered heads)."""
    return selected_head(cfg, sorted(DENSE_HEADS.keys()))


def build_dense_head(cfg, in_channels: int):
    """The dense head selected by :func:`head_name`, built for ``in_channels``-channel features."""
    return DENSE_HEADS[head_name(cfg)](cfg, in_channels)


def config_node(cfg) -> str:
    """Name of the ``cfg.MODEL`` node of the selected head (declared at registration)."""
    name = head_name(cfg)
    DENSE_HEADS[name]  # noqa: B018  (a clear error for an unknown head)
    return DENSE_HEADS.config_nodes[name]


def num_classes_key(cfg) -> str:
    """Dotted name of the ``NUM_CLASSES`` key the selected head reads, e.g. ``MODEL.ATSS.NUM_CLASSES``."""
    return f"MODEL.{config_node(cfg)}.NUM_CLASSES"


def _head_node(cfg):
    node = config_node(cfg)
    if node not in cfg.MODEL or "NUM_CLASSES" not in cfg.MODEL[node]:
        raise KeyError(f"head {head_name(cfg)!r}: config key MODEL.{node}.NUM_CLASSES does not exist")
    return cfg.MODEL[node]


def get_num_classes(cfg) -> int:
    """Value of :func:`num_classes_key` (foreground classes + 1; 0 = take it from the dataset)."""
    return int(_head_node(cfg).NUM_CLASSES)


def set_num_classes(cfg, value: int) -> None:
    """Sets :func:`num_classes_key` (``cfg`` must not be frozen)."""
    _head_node(cfg).NUM_CLASSES = int(value)


def resolve_num_classes(cfg, num_foreground: int, dataset_desc: str):
    """Check (or fill in) the head's NUM_CLASSES against the training data's ``num_foreground`` classes.

    NUM_CLASSES == 0 -> set to ``num_foreground + 1`` (returns a new frozen cfg); a different value
    -> ``ValueError`` naming both numbers and ``dataset_desc``.
    """
    key = num_classes_key(cfg)
    value = get_num_classes(cfg)
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


def fill_num_classes_from_data(cfg):
    """At test time: replace a NUM_CLASSES of 0 by the training data's count (other values are kept)."""
    from maskrcnn_benchmark.data import get_dataset_num_classes

    if get_num_classes(cfg) != 0:
        return cfg
    return resolve_num_classes(cfg, get_dataset_num_classes(cfg, is_train=True),
                               f"DATASETS.TRAIN={list(cfg.DATASETS.TRAIN)}")
