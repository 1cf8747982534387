"""Config nodes declared by the modules that use them: a dense head brings its own ``cfg.MODEL.<NODE>``.

The keys of the built-in parts live in :mod:`.defaults`. A module that adds a part (a dense head)
declares its node's defaults next to its code and registers them when it is imported::

    GFL_DEFAULTS = CfgNode()
    # Largest distance bin in strides (REG_MAX + 1 bins per side).
    GFL_DEFAULTS.REG_MAX = 16
    ...
    register_config_node("MODEL.GFL", GFL_DEFAULTS, owner=__name__)

(a dense head does it through ``@DENSE_HEADS.register(..., defaults=GFL_DEFAULTS)``). The node is
added to the default config (``maskrcnn_benchmark.config.cfg``) in place, so every clone taken
afterwards has it, :func:`~.loading.setup_cfg` included; a yaml key that the node lacks is refused
by yacs as for any key of ``defaults.py``, and ``cfg.dump()`` writes the node like the others.

The config package imports nothing of the rest of the package, so registration is pushed here by
the module that owns the node and never pulled: an entry point must import that module before it
reads a config that names the node (``maskrcnn_benchmark.modeling.dense_heads`` imports every head
module; the tools and ``maskrcnn_benchmark.engine`` do). A config file or override that names a
node nobody registered is a :class:`UnregisteredNodeError` that says so.

Rules: a registered node is a new key (a key of ``defaults.py`` or another module's node is an
error naming both); registering the same key again with equal defaults does nothing (a module
imported twice), with other defaults it is an error naming the owners and the differing keys.
"""
from __future__ import annotations

import copy
import re
from types import MappingProxyType
from typing import Dict, Iterable, List, Mapping, NamedTuple

from yacs.config import CfgNode

from .defaults import _C
from .loading import ConfigError, config_differences

__all__ = ["RegisteredNode", "ConfigNodeRegistry", "UnregisteredNodeError", "CONFIG_NODES",
           "register_config_node", "DEFAULTS_FILE", "REGISTERING_MODULE"]

#: Where the built-in keys are defined (named in the errors).
DEFAULTS_FILE = "maskrcnn_benchmark/config/defaults.py"
#: The module whose import registers every dense head's node (named in the errors; not imported here).
REGISTERING_MODULE = "maskrcnn_benchmark.modeling.dense_heads"
_KEY_PART = re.compile(r"^[A-Z][A-Z0-9_]*$")


class UnregisteredNodeError(ConfigError):
    """A config file or override names a node (a key holding keys) that the default config lacks:
    a typo, or the node of a module (a dense head) that was not imported before the config was read."""


class RegisteredNode(NamedTuple):
    """A node added by :meth:`ConfigNodeRegistry.register`."""

    key: str  #: dotted key, e.g. ``"MODEL.GFL"``
    defaults: CfgNode  #: a frozen copy of the registered defaults
    owner: str  #: the module that registered it, e.g. ``"maskrcnn_benchmark.modeling.dense_heads.gfl"``


def _as_node(defaults, key: str) -> CfgNode:
    """``defaults`` (a CfgNode or a mapping, nested mappings allowed) as a new plain ``CfgNode`` (the
    type of the default config's sub-nodes: yacs compares node types when merging)."""
    if not isinstance(defaults, Mapping):
        raise ConfigError(f"config node {key}: the defaults must be a CfgNode or a mapping of keys, got "
                          f"{type(defaults).__name__}")
    bad = [k for k in _leaf_keys(defaults) if not _KEY_PART.match(k.rsplit(".", 1)[-1])]
    if bad:
        raise ConfigError(f"config node {key}: key(s) {bad} are not upper-case names (A-Z, 0-9, _)")
    try:
        return CfgNode(copy.deepcopy(dict(defaults)))
    except AssertionError as e:  # yacs checks the value types with assertions
        raise ConfigError(f"config node {key}: {e}") from None


def _leaf_keys(node: Mapping, prefix: str = "") -> List[str]:
    out = []
    for k, v in node.items():
        out.append(f"{prefix}{k}")
        if isinstance(v, Mapping):
            out += _leaf_keys(v, f"{prefix}{k}.")
    return out


class ConfigNodeRegistry:
    """The nodes registered into one root config (:data:`CONFIG_NODES`: the default config).

    Args:
        root: the config the nodes are added to (changed in place).
        defaults_file: where ``root``'s own keys are defined (named in the errors).
    """

    def __init__(self, root: CfgNode, defaults_file: str = DEFAULTS_FILE):
        self.root = root
        self.defaults_file = defaults_file
        self._nodes: Dict[str, RegisteredNode] = {}

    @property
    def nodes(self) -> Mapping[str, RegisteredNode]:
        """Dotted key -> :class:`RegisteredNode`, in registration order (read-only)."""
        return MappingProxyType(self._nodes)

    def __contains__(self, key: str) -> bool:
        return key in self._nodes

    def register(self, key: str, defaults, owner: str) -> CfgNode:
        """Add ``defaults`` to the root at the dotted ``key`` (e.g. ``"MODEL.GFL"``) and return the node.

        Args:
            key: dotted path of upper-case names; its parent (``MODEL``) must be a node of the root.
            defaults: a ``CfgNode`` or mapping (nested mappings become sub-nodes); copied.
            owner: the registering module (``__name__``), named in the errors.

        Raises:
            ConfigError: a bad key or value; ``key`` is a key of the root that no module registered
                (a key of ``defaults_file``); ``key`` was registered with other defaults.
        """
        parts = str(key).split(".")
        if not all(_KEY_PART.match(p) for p in parts):
            raise ConfigError(f"config node {key!r} (registered by {owner}): a dotted path of upper-case "
                              f"names (A-Z, 0-9, _) is expected, e.g. 'MODEL.GFL'")
        node = _as_node(defaults, key)
        parent = self.root
        for i, part in enumerate(parts[:-1]):
            parent = parent.get(part) if isinstance(parent, dict) else None
            if not isinstance(parent, CfgNode):
                raise ConfigError(f"config node {key} (registered by {owner}): its parent "
                                  f"{'.'.join(parts[:i + 1])} is not a node of the default config")
        leaf = parts[-1]
        known = self._nodes.get(key)
        if known is not None:
            if known.defaults == node:
                return parent[leaf]  # the same node again (a module imported twice): nothing to do
            diff = "; ".join(f"{key}.{k}: {a!r} vs {b!r}" for k, a, b in config_differences(known.defaults, node))
            raise ConfigError(f"config node {key} is registered by {known.owner} and again by {owner} with other "
                              f"defaults ({diff}); a node has one owner: rename one of them")
        if leaf in parent:
            raise ConfigError(f"config node {key} (registered by {owner}): {key} is already a key of the default "
                              f"config ({self.defaults_file}), not a registered node; choose another name")
        frozen = parent.is_frozen()
        if frozen:
            parent.defrost()
        try:
            setattr(parent, leaf, copy.deepcopy(node))
        finally:
            if frozen:
                parent.freeze()
        node.freeze()
        self._nodes[key] = RegisteredNode(key, node, owner)
        return parent[leaf]

    def unregistered_node_error(self, keys: Iterable[str], source: str) -> UnregisteredNodeError:
        """The error for the nodes ``keys`` that ``source`` (a config file, "the command line") names
        and the root lacks: says which module to import, and which nodes are registered now."""
        keys = list(keys)
        registered = ", ".join(f"{k} ({n.owner})" for k, n in self._nodes.items()) or "none"
        return UnregisteredNodeError(
            f"{source}: {', '.join(keys)} {'is not a node' if len(keys) == 1 else 'are not nodes'} of the default "
            f"config. A dense head's node (cfg.MODEL.<NODE>, e.g. MODEL.GFL) is declared in the head's module "
            f"and exists once that module is imported: import {REGISTERING_MODULE} (it registers every "
            f"head) before setup_cfg / cfg_from_args reads the config. Registered now: {registered}. "
            f"Otherwise check the spelling against {self.defaults_file}.")

    def check_known_nodes(self, cfg: CfgNode, data: Mapping, source: str) -> None:
        """:meth:`unregistered_node_error` for every node of ``data`` (a yaml file's mapping) that
        ``cfg`` lacks; unknown leaf keys are left to yacs (its "Non-existent config key" error)."""
        missing = _missing_nodes(cfg, data)
        if missing:
            raise self.unregistered_node_error(missing, source)


def _missing_nodes(cfg: Mapping, data: Mapping, prefix: str = "") -> List[str]:
    """Dotted keys of ``data`` whose value is a mapping (a node) and that ``cfg`` lacks."""
    out = []
    for key, value in data.items():
        if not isinstance(value, Mapping):
            continue
        if key not in cfg:
            out.append(f"{prefix}{key}")
        elif isinstance(cfg[key], Mapping):
            out += _missing_nodes(cfg[key], value, f"{prefix}{key}.")
    return out


#: The nodes registered into the default config (``maskrcnn_benchmark.config.cfg``).
CONFIG_NODES = ConfigNodeRegistry(_C)


def register_config_node(key: str, defaults, owner: str) -> CfgNode:
    """Add the node ``defaults`` to the default config at ``key`` (:meth:`ConfigNodeRegistry.register`
    of :data:`CONFIG_NODES`): a module's own config keys, e.g. a dense head's ``MODEL.<NODE>``."""
    return CONFIG_NODES.register(key, defaults, owner)
