"""``MODEL.LEGACY_PLUS_ONE``: the original ATSS / Dynamic ATSS releases' box geometry, and how it is chosen.

This project works in continuous pixel coordinates (a box ``[x1, x2]`` covers ``[x1, x2)``, width
``x2 - x1``). The releases (``sfzhang15/ATSS``, ``ZTX-100/DLA-Combined-IoUs``, both maskrcnn-benchmark
code) keep boxes in a "+1" frame: ``[x1, x2]`` holds the pixel indices ``x1 .. x2``, i.e. the
continuous ``[x1, x2 + 1)``. Translated into continuous coordinates, their formulas give these
conventions; each lives as a parameter of the one function that applies it:

- anchors: ``generate_anchors`` from ``[1, 1, s, s] - 0.5`` puts every anchor's centre at
  ``x s + s/2 + 0.5``, 0.5 px right of / below ours, and rounds ratio widths to whole pixels:
  ``AnchorGenerator(legacy_plus_one=)`` (``legacy_cell_anchors``).
- centre-inside test: ``min(l, t, r, b) > 0.01`` on "+1" distances (from the centre *value*, continuous
  ``- 0.5``, to the inclusive sides) is a 0.51 px margin: ``centers_inside(margin=)``,
  ``modeling.assigners.base.center_margin``.
- ATSS centerness target: ``l, t, r, b`` each minus 0.5: ``point_box_distances(plus_one=)``,
  ``dense_heads.atss.centerness_targets``.
- GIoU loss: areas without "+1" of the inclusive boxes, i.e. both boxes 1 px smaller, and the predicted
  ``x2, y2`` clamped to at least ``x1, y1``: ``giou_loss(plus_one=)``.
- clipping: ``x1`` to ``[0, w - 1]``, ``x2`` to ``[1, w]``, keep ``x2 >= x1``: ``clip_boxes(plus_one=)``
  (``DensePostProcessor(legacy_plus_one=)``).
- final rescale: ``x2 -> (x2 - 1) r + 1`` (``x1 -> x1 r``): ``BoxList.resize(legacy_plus_one=)``.
- no switch needed: IoUs (assignment, Dynamic ATSS's quality ``q``) and NMS, whose "+1" areas and
  intersections on inclusive boxes are the continuous ones (the CUDA ``ml_nms`` suppresses at IoU
  ``>`` the threshold, as ``batched_nms``); the box coder (``TO_REMOVE = 1`` widths and centres are
  the continuous ones, its decoded ``x2`` is the inclusive ``cx + w / 2 - 1``).

Not reproduced: the releases' training-data conventions (COCO boxes narrower than 1 px widened to
1 px, GT ``x2`` resized as ``(x2 - 1) r + 1``, ``clip_to_image(remove_empty=True)`` dropping GTs up
to 1 px wide), the ``kthvalue`` cap that keeps score ties beyond ``DETECTIONS_PER_IMG``, and the
"+1" conventions of the point heads (FCOS, AutoAssign: the key does not affect them).

How it is chosen (:func:`resolve_legacy_plus_one`, called by every entry point that loads weights
before it builds the model: ``build_test_model`` (test_net, visualiser, export), the training setup
of ``engine/trainer.py``, the Predictor): ``"auto"`` (the default) turns it on when the weights carry the releases'
``rpn.anchor_generator.cell_anchors.<level>`` buffers (every checkpoint of theirs does; with the
switch on, this project's anchor generator holds the same buffers, so a checkpoint trained or
fine-tuned here under it says so too), and off otherwise (this project's checkpoints, ImageNet
weights, no weights: the continuous convention, the default for new training). True / False force
it. The log states which geometry is in force and why. A model built from a config that was never
resolved ("auto") uses the continuous convention. The key's values, and the deprecated
``TEST.LEGACY_PLUS_ONE_RESIZE``, are read by :mod:`maskrcnn_benchmark.config.legacy`.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Mapping, Optional

from maskrcnn_benchmark.config.legacy import LEGACY_PLUS_ONE_KEY as KEY
from maskrcnn_benchmark.config.legacy import legacy_plus_one_setting as _setting

__all__ = ["legacy_plus_one_from_config", "has_release_anchors", "rename_release_anchor_keys",
           "resolve_legacy_plus_one", "KEY"]

_AUTO = (None, "auto")
# The releases' name of the anchor buffers, and ours (the dense head holds its priors as "prior_generator").
_RELEASE_ANCHORS = "anchor_generator.cell_anchors."
_OUR_ANCHORS = "prior_generator.cell_anchors."


def legacy_plus_one_from_config(cfg) -> bool:
    """Whether ``cfg`` puts the releases' "+1" geometry in force (True only when ``MODEL.LEGACY_PLUS_ONE``
    is True, set or resolved; "auto" that was never resolved counts as False)."""
    return _setting(cfg) is True


def has_release_anchors(state_dict: Optional[Mapping]) -> bool:
    """Whether a state dict holds the releases' anchor buffers (``...anchor_generator.cell_anchors.<l>``,
    or ``...prior_generator.cell_anchors.<l>`` after :func:`rename_release_anchor_keys` / in a checkpoint
    of this project trained with the switch on)."""
    if not state_dict:
        return False
    return any(_RELEASE_ANCHORS in f".{k}" or _OUR_ANCHORS in f".{k}" for k in state_dict)


def rename_release_anchor_keys(state_dict: Mapping) -> "OrderedDict":
    """``...anchor_generator.cell_anchors.<l>`` -> ``...prior_generator.cell_anchors.<l>`` (the name of
    the buffers of ``AnchorGenerator(legacy_plus_one=True)`` inside a dense head), other keys unchanged."""
    return OrderedDict((k.replace(_RELEASE_ANCHORS, _OUR_ANCHORS), v) for k, v in state_dict.items())


def resolve_legacy_plus_one(cfg, state_dict: Optional[Mapping] = None, source: str = "",
                            logger: Optional[logging.Logger] = None):
    """A frozen copy of ``cfg`` with ``MODEL.LEGACY_PLUS_ONE`` True or False, decided as the module
    docstring says from the weights about to be loaded; logs the geometry in force and why.

    Args:
        cfg: the config (``MODEL.LEGACY_PLUS_ONE`` "auto" / None, True or False).
        state_dict: the weights that will be loaded (only their keys are read), or None.
        source: what they are, for the log (e.g. ``"MODEL.WEIGHT /path/x.pth"``).
    """
    logger = logger or logging.getLogger("maskrcnn_benchmark.legacy_plus_one")
    setting = _setting(cfg)
    release = has_release_anchors(state_dict)
    what = source or "the weights"
    if setting in _AUTO:
        value = release
        why = (f"{KEY} auto: {what} carries the original releases' anchor buffers (cell_anchors)" if release
               else f"{KEY} auto: {what + ' has' if state_dict else 'no weights, so'} no release anchor "
                    f"buffers (cell_anchors)")
    else:
        value = setting
        why = f"{KEY} {setting} (set in the config)"
        if release and not value:
            logger.warning("%s comes from an original release (it has cell_anchors buffers) but %s is False: "
                           "its boxes will be about 0.5 px off the release's; set %s auto or True to reproduce "
                           "them", what, KEY, KEY)
    logger.info("Box geometry: %s (%s)", "the original releases' \"+1\" conventions (anchors 0.5 px right/down, "
                "centre margin 0.51 px, +1 centerness / GIoU / clipping / rescale)" if value
                else "continuous coordinates (this project's convention)", why)
    out = cfg.clone()
    out.defrost()
    out.MODEL.LEGACY_PLUS_ONE = bool(value)
    out.freeze()
    return out
