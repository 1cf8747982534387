"""Label assignment for dense heads: which priors are positive for which GT.

Every assigner is called per image as
``assigner(anchors_per_level: list[Tensor[N_l, 4]], gt_boxes: Tensor[G, 4], gt_labels: Tensor[G],
predictions: Optional[Predictions] = None) -> AssignResult`` and runs under ``torch.no_grad``;
:func:`assign_batch` runs one over a batch (the step every dense head uses).

One class per strategy: ``ATSSAssigner`` / ``DynamicATSSAssigner`` (one candidate/threshold
routine, :class:`CandidateThresholdAssigner`), ``TopKAssigner``, ``FCOSAssigner`` /
``SSCAssigner``, ``MaxIoUAssigner``; :func:`build_positive_type_assigner` maps the ATSS release's
``POSITIVE_TYPE`` values to them.
"""
from .atss import (ATSSAssigner, CandidateThresholdAssigner, POSITIVE_TYPES,  # noqa: F401
                   TopKAssigner, build_positive_type_assigner, positive_type_assigner_from_config)
from .base import AssignResult, BaseAssigner, Predictions  # noqa: F401
from .batch import BatchAssignment, assign_batch  # noqa: F401
from .dynamic_atss import DynamicATSSAssigner  # noqa: F401
from .fcos import FCOSAssigner, SSCAssigner, scale_ranges_from_sizes  # noqa: F401
from .max_iou import MaxIoUAssigner  # noqa: F401

__all__ = ["ATSSAssigner", "CandidateThresholdAssigner", "TopKAssigner", "DynamicATSSAssigner",
           "AssignResult", "BaseAssigner", "Predictions", "BatchAssignment", "assign_batch",
           "POSITIVE_TYPES", "build_positive_type_assigner", "positive_type_assigner_from_config",
           "FCOSAssigner", "SSCAssigner", "scale_ranges_from_sizes", "MaxIoUAssigner"]
