"""The original releases' config keys, read as they meant: the ``*_ON`` head flags (which head a
config selects, and the two meanings of ``ATSS_ON``), ``MODEL.LEGACY_PLUS_ONE``'s values and the
deprecated ``TEST.LEGACY_PLUS_ONE_RESIZE``.

Only the config is read here (no model, no weights): what ``MODEL.LEGACY_PLUS_ONE`` does to the
geometry, and how "auto" is decided from the weights, is :mod:`maskrcnn_benchmark.utils.legacy_plus_one`.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Optional, Sequence, Tuple

__all__ = ["LEGACY_HEAD_FLAGS", "selected_head", "legacy_head_from_file", "resolve_legacy_head",
           "LEGACY_PLUS_ONE_KEY", "legacy_plus_one_setting", "apply_deprecated_resize_key"]

# (flag of cfg.MODEL, the head it selects) of the releases' configs, which leave MODEL.HEAD empty.
LEGACY_HEAD_FLAGS = (("ATSS_ON", "ATSS"), ("FCOS_ON", "FCOS"), ("RETINANET_ON", "RETINANET"))
LEGACY_PLUS_ONE_KEY = "MODEL.LEGACY_PLUS_ONE"
_AUTO = (None, "auto")
_DYNAMIC_ATSS_NAME = re.compile(r"dynamic[_-]?atss", re.IGNORECASE)


def selected_head(cfg, known_heads: Sequence[str] = ()) -> str:
    """``cfg.MODEL.HEAD`` if set, else the head named by the one legacy ``*_ON`` flag that is on.

    Raises:
        ValueError: no flag or several flags are on (the message lists ``known_heads``, the
            registered head names, when given).
    """
    if cfg.MODEL.HEAD:
        return cfg.MODEL.HEAD
    on = [name for flag, name in LEGACY_HEAD_FLAGS if getattr(cfg.MODEL, flag, False)]
    if len(on) == 1:
        return on[0]
    if not on:
        heads = f"one of {list(known_heads)}" if known_heads else "a registered dense head"
        raise ValueError(f"no dense head selected: set MODEL.HEAD ({heads}) or one legacy flag MODEL.ATSS_ON / "
                         "MODEL.FCOS_ON / MODEL.RETINANET_ON")
    raise ValueError(f"several legacy head flags are on ({on}); set exactly one or use MODEL.HEAD")


def legacy_head_from_file(cfg, config_file: str = "") -> Optional[Tuple[str, str]]:
    """The head a legacy config file means, when it leaves ``MODEL.HEAD`` empty and sets ``ATSS_ON``.

    The two original releases read ``ATSS_ON: True`` differently: the ATSS release builds ATSS, the
    Dynamic ATSS release (whose rpn builder returns Dynamic ATSS whenever ``ATSS_ON`` is set) builds
    Dynamic ATSS. Which release a file comes from is told by its name, as the releases named them
    (``dynamic_atss_R_50_FPN_1x.yaml`` in ``configs/dynamic_atss/``): ``"dynamic_atss"`` (or
    ``dynamic-atss`` / ``dynamicatss``, any case) in the file name or in the name of the folder that
    holds it -> ``"DYNAMIC_ATSS"``; otherwise ``"ATSS"``.

    Returns:
        ``(head, reason)`` for such a file, ``None`` when ``MODEL.HEAD`` is set or ``ATSS_ON`` is not
        the only legacy flag on (:func:`selected_head` decides those as before).
    """
    if cfg.MODEL.HEAD:
        return None
    on = [flag for flag, _ in LEGACY_HEAD_FLAGS if getattr(cfg.MODEL, flag, False)]
    if on != ["ATSS_ON"]:
        return None
    path = os.path.normpath(config_file or "")
    where = [os.path.basename(path), os.path.basename(os.path.dirname(path))]
    if any(_DYNAMIC_ATSS_NAME.search(part) for part in where):
        return "DYNAMIC_ATSS", (f"{config_file} sets MODEL.ATSS_ON and its name says dynamic_atss: the Dynamic "
                                f"ATSS release's meaning of ATSS_ON (set MODEL.HEAD ATSS for plain ATSS)")
    return "ATSS", (f"{config_file or 'the config'} sets MODEL.ATSS_ON (the ATSS release's meaning; a file "
                    f"named dynamic_atss_* would mean Dynamic ATSS: set MODEL.HEAD DYNAMIC_ATSS for that)")


def resolve_legacy_head(cfg, config_file: str) -> None:
    """Fix ``MODEL.HEAD`` of a legacy ``ATSS_ON`` file from its name (ATSS vs Dynamic ATSS release;
    see :func:`legacy_head_from_file`), and log the choice and how to choose the other. The saved
    config.yml then names the head. ``cfg`` must be unfrozen; changed in place."""
    if "MODEL" not in cfg or "HEAD" not in cfg.MODEL:  # a foreign base_cfg
        return
    chosen = legacy_head_from_file(cfg, config_file)
    if chosen is None:
        return
    cfg.MODEL.HEAD = chosen[0]
    logging.getLogger("maskrcnn_benchmark.config").info("MODEL.HEAD %s: %s", chosen[0], chosen[1])


def legacy_plus_one_setting(cfg):
    """``MODEL.LEGACY_PLUS_ONE`` as True, False, or "auto" / None (not decided yet); the strings
    "true" / "false" (any case) count as the booleans. ValueError naming the key for anything else."""
    value = cfg.MODEL.LEGACY_PLUS_ONE
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if value not in _AUTO + (True, False):
        raise ValueError(f"{LEGACY_PLUS_ONE_KEY} must be 'auto' (or None), True or False; got {value!r}")
    return value


def apply_deprecated_resize_key(cfg, logger: Optional[logging.Logger] = None) -> None:
    """The deprecated ``TEST.LEGACY_PLUS_ONE_RESIZE True`` (which only changed the final rescale) means
    ``MODEL.LEGACY_PLUS_ONE True`` now (the whole geometry), with a warning; a conflicting explicit
    ``MODEL.LEGACY_PLUS_ONE False`` is a ValueError. ``cfg`` must be unfrozen; changed in place."""
    if "TEST" not in cfg or not cfg.TEST.get("LEGACY_PLUS_ONE_RESIZE", False):
        return
    key = LEGACY_PLUS_ONE_KEY
    if legacy_plus_one_setting(cfg) is False:
        raise ValueError(f"TEST.LEGACY_PLUS_ONE_RESIZE True (deprecated) contradicts {key} False; "
                         f"drop TEST.LEGACY_PLUS_ONE_RESIZE")
    (logger or logging.getLogger("maskrcnn_benchmark.config")).warning(
        "TEST.LEGACY_PLUS_ONE_RESIZE is deprecated: it now sets %s True, the releases' whole \"+1\" geometry "
        "(anchors, assignment, losses, clipping and the final rescale); %s auto (the default) already "
        "picks it for the releases' checkpoints", key, key)
    cfg.MODEL.LEGACY_PLUS_ONE = True
    cfg.TEST.LEGACY_PLUS_ONE_RESIZE = False
