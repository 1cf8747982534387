"""Small file-system helpers: mkdir and saving the merged config."""
from __future__ import annotations

import errno
import os

from .comm import is_main_process
from .io import atomic_write_text


def mkdir(path: str) -> None:
    """``mkdir -p path`` (no error if it exists)."""
    try:
        os.makedirs(path)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise


def save_config(cfg, path: str) -> None:
    """Atomically write the (merged) yacs config ``cfg`` as yaml to ``path`` (rank 0 only)."""
    if is_main_process():
        atomic_write_text(path, cfg.dump())


def check_config_keys(cfg, opts) -> None:
    """Raise a clear error for a malformed ``KEY VALUE ...`` override list or a key ``cfg`` lacks."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ValueError(f"Config overrides must be KEY VALUE pairs; got an odd number of items: {opts}")
    for key in opts[0::2]:
        node = cfg
        for part in str(key).split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"Non-existent config key: {key} (from the command line; "
                               f"see maskrcnn_benchmark/config/defaults.py)")
            node = node[part]


def setup_cfg(config_file: str = "", opts=None, base_cfg=None):
    """A merged copy of the default config: ``config_file`` (yaml), then ``KEY VALUE`` ``opts``; frozen."""
    if base_cfg is None:
        from maskrcnn_benchmark.config import cfg as base_cfg
    cfg = base_cfg.clone()
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file not found: {config_file!r}")
        cfg.merge_from_file(config_file)
    check_config_keys(cfg, opts)
    cfg.merge_from_list(list(opts or []))
    cfg.freeze()
    return cfg
