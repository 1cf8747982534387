"""Setting up the config: the default config (:mod:`.defaults`, and the nodes that modules register:
:mod:`.registration`), a yaml file and ``KEY VALUE`` overrides merged into a frozen copy
(:func:`setup_cfg`), the tools' shared ``--config-file`` arguments (:func:`add_config_args`,
:func:`cfg_from_args`), and comparing two configs.

Every mistake in the file or the overrides is a ``ValueError`` (:class:`ConfigError` where the
check is this module's own) or ``KeyError`` naming the file, line or key; the original releases'
files are read as they meant (:mod:`.legacy`).
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Optional

from .legacy import apply_deprecated_resize_key, resolve_legacy_head

__all__ = ["ConfigError", "setup_cfg", "cfg_from_args", "add_config_args", "check_config_keys",
           "check_finite_config", "flatten_config", "config_differences", "CONFIG_FILE_HELP", "YAML_EXTENSIONS"]


class ConfigError(ValueError):
    """A mistake in a config file or override (the message names the file or key); a user-input error
    for the tools (:func:`~maskrcnn_benchmark.utils.errors.is_user_input_error`)."""


def check_config_keys(cfg, opts) -> None:
    """Raise a clear error for a malformed ``KEY VALUE ...`` override list or a key ``cfg`` lacks."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ValueError(f"Config overrides must be KEY VALUE pairs; got an odd number of items: {opts}")
    for key in opts[0::2]:
        node = cfg
        parts = str(key).split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                if i < len(parts) - 1 and isinstance(node, dict):  # a node: maybe a module's, not imported
                    from .registration import CONFIG_NODES

                    raise CONFIG_NODES.unregistered_node_error([".".join(parts[:i + 1])],
                                                               f"the command line ({key})")
                raise KeyError(f"Non-existent config key: {key} (from the command line; "
                               f"see maskrcnn_benchmark/config/defaults.py and the registered nodes)")
            node = node[part]


YAML_EXTENSIONS = (".yaml", ".yml")
CONFIG_FILE_HELP = ("path to a yaml config (.yaml/.yml). A .py config file is Python code that runs when "
                    "it is read, so it is refused unless --allow-python-config is given")


def add_config_args(parser: argparse.ArgumentParser, default: str = "") -> argparse.ArgumentParser:
    """Add ``--config-file FILE`` and ``--allow-python-config`` (the shared arguments of every tool)."""
    parser.add_argument("--config-file", default=default, metavar="FILE", help=CONFIG_FILE_HELP)
    parser.add_argument("--allow-python-config", action="store_true",
                        help="accept a .py --config-file (yacs runs its code: only for files you trust)")
    return parser


def cfg_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, opts=None,
                  validate: Optional[Callable] = None):
    """The tools' config: :func:`setup_cfg` of ``args.config_file`` (``args.allow_python_config`` when
    the parser has it) and ``opts`` (default ``args.opts``), then ``validate(cfg)`` if given; a bad file,
    key or value ends the program through ``parser.error`` with the message (no traceback)."""
    try:
        cfg = setup_cfg(args.config_file, args.opts if opts is None else opts,
                        allow_python=getattr(args, "allow_python_config", False))
        if validate is not None:
            validate(cfg)
    except (KeyError, ValueError, FileNotFoundError) as e:
        parser.error(str(e.args[0] if isinstance(e, KeyError) and e.args else e))
    return cfg


def _merge_config_file(cfg, config_file: str, allow_python: bool) -> None:
    """``cfg.merge_from_file`` with checks: only .yaml/.yml (or .py when ``allow_python``), and yaml
    syntax errors reported as ``ValueError`` naming the file and line."""
    import yaml

    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file not found: {config_file!r}")
    ext = os.path.splitext(config_file)[1].lower()
    if ext == ".py" and not allow_python:
        raise ValueError(f"config file {config_file} is a Python file, which would run its code when read; "
                         f"use a .yaml config, or pass --allow-python-config if you trust it")
    if ext not in YAML_EXTENSIONS + ((".py",) if allow_python else ()):
        raise ValueError(f"config file {config_file} must be a .yaml or .yml file (got {ext or 'no extension'!r})")
    try:
        if ext in YAML_EXTENSIONS:
            data = _check_yaml_mapping(config_file)
            if data:
                from .registration import CONFIG_NODES

                CONFIG_NODES.check_known_nodes(cfg, data, f"config file {config_file}")
        cfg.merge_from_file(config_file)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ValueError(f"config file {config_file}: invalid YAML{where}: {problem}") from None


def _check_yaml_mapping(config_file: str):
    """The yaml mapping of ``config_file`` (None for an empty file, which changes nothing);
    ``ConfigError`` naming the file when its top level is not a mapping (a list, a string, a number)."""
    import yaml

    with open(config_file, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {config_file}: the top level must be a mapping of config keys "
                             f"(e.g. 'MODEL:' / 'SOLVER:' sections), got a {type(data).__name__}")
    return data


def check_finite_config(cfg, source: str = "the config") -> None:
    """``ConfigError`` naming every float config key (or float inside a list key) that is NaN or
    infinite (e.g. ``BASE_LR: .nan`` in a yaml); ``source`` says where the values came from."""
    import math

    def finite(value) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, tuple):
            return all(finite(v) for v in value)
        return True

    bad = [f"{key} = {value!r}" for key, value in flatten_config(cfg).items() if not finite(value)]
    if bad:
        raise ConfigError(f"{source}: non-finite value(s) for {len(bad)} key(s): {', '.join(bad)}; every "
                             f"number in the config must be finite")


def setup_cfg(config_file: str = "", opts=None, base_cfg=None, allow_python: bool = False):
    """A merged copy of the default config: ``config_file`` (yaml), then ``KEY VALUE`` ``opts``; frozen.

    ``allow_python``: accept a ``.py`` config file (yacs executes it; ``--allow-python-config``).
    Raises ValueError for another extension, a yaml syntax error (naming the file and line), a yaml
    whose top level is not a mapping (naming the file), a node the default config lacks
    (:class:`~.registration.UnregisteredNodeError`: e.g. ``MODEL.GFL`` when the module that registers
    it, ``maskrcnn_benchmark.modeling.dense_heads``, was not imported; naming the file and the key) or a
    NaN / infinite number (naming the key)."""
    if base_cfg is None:
        from .defaults import _C as base_cfg
    cfg = base_cfg.clone()
    if config_file:
        _merge_config_file(cfg, config_file, allow_python)
    check_config_keys(cfg, opts)
    cfg.merge_from_list(list(opts or []))
    check_finite_config(cfg, f"config file {config_file} and the overrides" if config_file else "the overrides")
    resolve_legacy_head(cfg, config_file)
    if "MODEL" in cfg and "LEGACY_PLUS_ONE" in cfg.MODEL:  # not a foreign base_cfg
        apply_deprecated_resize_key(cfg)
    cfg.freeze()
    return cfg


def flatten_config(node, prefix: str = "") -> dict:
    """``{"SOLVER.STEPS": (30000,), ...}``: every leaf of a (yacs) config node by its dotted key."""
    flat = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def config_differences(old, new) -> list:
    """``[(key, old value, new value)]`` for every leaf that differs between two configs (a key only in
    one of them has the value ``"<absent>"`` in the other), sorted by key. ``old`` / ``new``: config
    nodes or their yaml text (``cfg.dump()``)."""
    from yacs.config import CfgNode

    old, new = (CfgNode.load_cfg(c) if isinstance(c, str) else c for c in (old, new))
    a, b = flatten_config(old), flatten_config(new)
    missing = "<absent>"
    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)]
