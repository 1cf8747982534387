"""Dataset evaluation: ``evaluate(dataset, predictions, output_folder)`` dispatches on the dataset
(COCO json datasets: COCO AP; Pascal VOC datasets: VOC AP50 per class and mAP)."""
from .coco_eval import METRICS, evaluate as coco_evaluate  # noqa: F401
from .report import EvaluationResult, format_table, plot_pr_curves  # noqa: F401
from .voc_eval import evaluate as voc_evaluate  # noqa: F401


def evaluate(dataset, predictions, output_folder, logger=None, voc_metric: str = "area", pr_curves: bool = True):
    """Evaluate ``predictions`` (dataset index -> BoxList in the original image size) on ``dataset``.

    Returns an :class:`EvaluationResult`: COCO ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}``
    (see :func:`.coco_eval.evaluate`), VOC ``{"mAP"}`` (AP50, ``voc_metric`` "area" or "11point",
    see :func:`.voc_eval.evaluate`), with ``.per_class`` and ``.info``. ``pr_curves``: also draw
    ``output_folder/pr_curves.png`` (with matplotlib).
    """
    from ..coco import COCODataset
    from ..voc import PascalVOCDataset

    if isinstance(dataset, PascalVOCDataset):
        return voc_evaluate(dataset, predictions, output_folder, logger=logger, metric=voc_metric, pr_curves=pr_curves)
    if isinstance(dataset, COCODataset) or hasattr(dataset, "load_groundtruth_json"):
        return coco_evaluate(dataset, predictions, output_folder, logger=logger, pr_curves=pr_curves)
    raise NotImplementedError(f"no evaluation for dataset type {type(dataset).__name__}")
