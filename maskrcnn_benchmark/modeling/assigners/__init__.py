"""Label assignment for dense heads: which anchors are positive for which GT.

``from maskrcnn_benchmark.modeling.assigners import ATSSAssigner, DynamicATSSAssigner, AssignResult``

Every assigner is called per image as
``assigner(anchors_per_level: list[Tensor[N_l, 4]], gt_boxes: Tensor[G, 4], gt_labels: Tensor[G],
pred_boxes: Optional[Tensor[N, 4]] = None) -> AssignResult`` and runs under ``torch.no_grad``.
"""
from .atss import ATSSAssigner, POSITIVE_TYPES  # noqa: F401
from .base import AssignResult, BaseAssigner  # noqa: F401
from .dynamic_atss import DynamicATSSAssigner  # noqa: F401
from .fcos import FCOSAssigner  # noqa: F401
from .max_iou import MaxIoUAssigner  # noqa: F401

__all__ = ["ATSSAssigner", "DynamicATSSAssigner", "AssignResult", "BaseAssigner",
           "POSITIVE_TYPES", "FCOSAssigner", "MaxIoUAssigner"]
