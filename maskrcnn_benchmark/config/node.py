"""The root config node: a yacs ``CfgNode`` whose "auto" / True / False keys accept all three values.

yacs refuses a merged value of another type than the default's (``"auto"`` is a str, ``True`` a
bool). For the keys of :data:`CPU_SPEEDUP_KEYS`
(``MODEL.CHANNELS_LAST``, ``MODEL.WINOGRAD``) :class:`ConfigNode` takes the value out of the yaml
or the ``KEY VALUE`` list, checks it (``parse_auto_flag``: "auto", True, False, or those strings in
any case; anything else is a ValueError naming the key) and stores "auto", True or False; every
other key merges as yacs merges it.
"""
from __future__ import annotations

import copy
from typing import Union

from yacs.config import CfgNode

__all__ = ["AUTO", "AUTO_FLAG_KEYS", "CPU_SPEEDUP_KEYS", "ConfigNode", "parse_auto_flag"]

AUTO = "auto"
#: The CPU speed-up keys (utils/cpu_speedups.py): they take "auto" / True / False (the root node
#: accepts all three for them).
CPU_SPEEDUP_KEYS = ("MODEL.CHANNELS_LAST", "MODEL.WINOGRAD")
_STRINGS = {"auto": AUTO, "true": True, "false": False}


def parse_auto_flag(value, key: str) -> Union[bool, str]:
    """A config value of ``key`` -> ``"auto"``, ``True`` or ``False``.

    Accepts the bools and the strings "auto", "True", "False" (any case, surrounding spaces
    ignored). Raises ValueError naming ``key`` and the value for anything else (1, "yes", None...).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _STRINGS:
        return _STRINGS[value.strip().lower()]
    raise ValueError(f"{key} must be 'auto', True or False; got {value!r}")


AUTO_FLAG_KEYS = CPU_SPEEDUP_KEYS


def _parent(node, full_key: str):
    """(the node holding ``full_key``'s leaf, the leaf name), or (None, leaf) when ``node`` lacks a parent."""
    *parents, leaf = full_key.split(".")
    for name in parents:
        if not isinstance(node, dict) or name not in node:
            return None, leaf
        node = node[name]
    return (node if isinstance(node, dict) else None), leaf


class ConfigNode(CfgNode):
    """The root of the default config (see the module docstring). Only the root's
    ``merge_from_other_cfg`` (hence ``merge_from_file``) and ``merge_from_list`` differ from yacs'."""

    @classmethod
    def load_cfg(cls, cfg_file_obj_or_str):
        """yacs' ``load_cfg``, as plain ``CfgNode`` s (the type of the default config's sub-nodes)."""
        return CfgNode.load_cfg(cfg_file_obj_or_str)

    @classmethod
    def _decode_cfg_value(cls, value):
        """yacs' decoding, with sub-configs as plain ``CfgNode`` s (yacs compares the node types)."""
        return CfgNode._decode_cfg_value(value)

    def _set_auto_flag(self, full_key: str, value) -> bool:
        """Store ``value`` (checked) at ``full_key`` if it is an auto-flag key of this config;
        returns whether it was one."""
        if full_key not in AUTO_FLAG_KEYS:
            return False
        dst, leaf = _parent(self, full_key)
        if dst is None or leaf not in dst:
            return False
        dst[leaf] = parse_auto_flag(value, full_key)
        return True

    def merge_from_other_cfg(self, cfg_other):
        other = None
        for full_key in AUTO_FLAG_KEYS:
            src, leaf = _parent(cfg_other, full_key)
            if src is not None and leaf in src:
                other = other if other is not None else copy.deepcopy(cfg_other)
                src, _ = _parent(other, full_key)
                if not self._set_auto_flag(full_key, src[leaf]):
                    continue  # not a key of this config: yacs reports it
                del src[leaf]
        return super().merge_from_other_cfg(other if other is not None else cfg_other)

    def merge_from_list(self, cfg_list):
        cfg_list = list(cfg_list)
        if len(cfg_list) % 2:
            return super().merge_from_list(cfg_list)  # yacs' error for an odd list
        rest = []
        for full_key, value in zip(cfg_list[0::2], cfg_list[1::2]):
            if not self._set_auto_flag(full_key, self._decode_cfg_value(value) if isinstance(value, str) else value):
                rest += [full_key, value]
        return super().merge_from_list(rest)
