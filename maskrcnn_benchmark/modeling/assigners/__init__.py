"""Label assignment for dense heads: which priors are positive for which GT.

Every assigner labels a whole batch at once, ``assigner.assign(anchors_per_level:
list[Tensor[N_l, 4]], gt: GTBatch (padded [B, G, 4] + validity mask), predictions) ->
BatchAssignment``, with fixed shapes and no host-device synchronisation (the step every dense head
uses, through :func:`assign_batch`); a per-image call ``assigner(anchors_per_level, gt_boxes
[G, 4], gt_labels [G], predictions) -> AssignResult`` is the same on a batch of one. Both run
under ``torch.no_grad``.

One class per strategy: ``ATSSAssigner`` / ``DynamicATSSAssigner`` (one candidate/threshold
routine, :class:`CandidateThresholdAssigner`), ``TopKAssigner``, ``FCOSAssigner`` /
``SSCAssigner``, ``MaxIoUAssigner``; :func:`build_positive_type_assigner` maps the ATSS release's
``POSITIVE_TYPE`` values to them.

A head that reuses an assigner names it in ``ASSIGNERS`` (``build_assigner(cfg, name, node)``):
the assigner's keys are read from the one config node ``cfg.MODEL.<node>`` (``MODEL.ATSS`` for the
ATSS family), never copied into the head's own node.
"""
from .atss import (ATSSAssigner, CandidateThresholdAssigner, POSITIVE_TYPES,  # noqa: F401
                   TopKAssigner, build_positive_type_assigner, positive_type_assigner_from_config)
from .base import AssignResult, BaseAssigner, GTBatch, Predictions  # noqa: F401
from .batch import BatchAssignment, assign_batch, pad_targets  # noqa: F401
from .dynamic_atss import DynamicATSSAssigner  # noqa: F401
from .fcos import FCOSAssigner, SSCAssigner, scale_ranges_from_sizes  # noqa: F401
from .max_iou import MaxIoUAssigner  # noqa: F401

from maskrcnn_benchmark.utils.registry import Registry  # noqa: E402

#: name -> ``build(cfg, node) -> assigner`` reading ``cfg.MODEL.<node>``:
#: ``"ATSS"``: the ``POSITIVE_TYPE`` family (ATSS / SSC / TOPK / IoU, :func:`positive_type_assigner_from_config`);
#: ``"DYNAMIC_ATSS"``: :class:`DynamicATSSAssigner` (needs the head's decoded predictions).
ASSIGNERS = Registry("ASSIGNERS")
ASSIGNERS.register("ATSS")(positive_type_assigner_from_config)
ASSIGNERS.register("DYNAMIC_ATSS")(DynamicATSSAssigner.from_config)


def build_assigner(cfg, name: str, node: str) -> BaseAssigner:
    """The ``ASSIGNERS`` entry ``name`` built from ``cfg.MODEL.<node>``."""
    if node not in cfg.MODEL:
        raise KeyError(f"assigner {name!r}: config node MODEL.{node} does not exist")
    return ASSIGNERS[name](cfg, node)

__all__ = ["ATSSAssigner", "CandidateThresholdAssigner", "TopKAssigner", "DynamicATSSAssigner",
           "AssignResult", "BaseAssigner", "GTBatch", "Predictions", "BatchAssignment", "assign_batch",
           "pad_targets", "ASSIGNERS", "build_assigner",
           "POSITIVE_TYPES", "build_positive_type_assigner", "positive_type_assigner_from_config",
           "FCOSAssigner", "SSCAssigner", "scale_ranges_from_sizes", "MaxIoUAssigner"]
