from torch.utils.data import ConcatDataset  # noqa: F401

from .coco import COCODataset  # noqa: F401
from .voc import PascalVOCDataset  # noqa: F401

__all__ = ["COCODataset", "PascalVOCDataset", "ConcatDataset"]
