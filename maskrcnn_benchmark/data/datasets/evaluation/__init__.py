"""Dataset evaluation: ``evaluate(dataset, predictions, output_folder)`` dispatches on the dataset."""
from .coco_eval import METRICS, evaluate as coco_evaluate  # noqa: F401


def evaluate(dataset, predictions, output_folder, logger=None, **kwargs):
    """Evaluate ``predictions`` (dataset index -> BoxList in the original image size) on ``dataset``.

    Returns ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` (fractions 0..1); see
    :func:`maskrcnn_benchmark.data.datasets.evaluation.coco_eval.evaluate`.
    """
    from ..coco import COCODataset

    if isinstance(dataset, COCODataset) or hasattr(dataset, "coco"):
        return coco_evaluate(dataset, predictions, output_folder, logger=logger, **kwargs)
    raise NotImplementedError(f"no evaluation for dataset type {type(dataset).__name__}")
