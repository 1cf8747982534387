"""Datasets, transforms, samplers and data loaders."""
from .build import (  # noqa: F401
    build_dataset,
    dataset_aspect_ratios,
    get_dataset_num_classes,
    make_data_loader,
    num_foreground_classes,
)
from .collate_batch import BatchCollator  # noqa: F401
