import json

import cv2
import numpy as np
import pytest
import torch

from maskrcnn_benchmark.data.datasets import COCODataset
from maskrcnn_benchmark.data.datasets.evaluation import evaluate
from maskrcnn_benchmark.structures.bounding_box import BoxList


@pytest.fixture
def dataset(tmp_path):
    """Two 100x80 images; json category ids 3 and 7 (contiguous 1 and 2); 3 medium-size boxes."""
    images = [{"id": 11, "file_name": "a.png", "height": 80, "width": 100},
              {"id": 12, "file_name": "b.png", "height": 80, "width": 100}]
    anns = [{"id": 1, "image_id": 11, "category_id": 3, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 11, "category_id": 7, "bbox": [55, 20, 40, 50], "area": 2000, "iscrowd": 0},
            {"id": 3, "image_id": 12, "category_id": 7, "bbox": [0, 0, 50, 40], "area": 2000, "iscrowd": 0}]
    for im in images:
        cv2.imwrite(str(tmp_path / im["file_name"]), np.zeros((80, 100, 3), np.uint8))
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]}))
    return COCODataset(str(ann), str(tmp_path), remove_images_without_annotations=False)


def _pred(boxes_xyxy, labels, scores=None, size=(100, 80)):
    p = BoxList(torch.tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4), size)
    p.add_field("labels", torch.tensor(labels, dtype=torch.int64))
    p.add_field("scores", torch.tensor(scores if scores is not None else [0.9] * len(labels)))
    return p


def test_perfect_detections_give_ap_one(dataset, tmp_path):
    preds = {0: _pred([[10, 10, 50, 50], [55, 20, 95, 70]], [1, 2]), 1: _pred([[0, 0, 50, 40]], [2])}
    res = evaluate(dataset, preds, str(tmp_path / "out"))
    assert res == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "APs": -1.0, "APm": 1.0, "APl": -1.0}
    written = json.loads((tmp_path / "out" / "bbox.json").read_text())
    assert len(written) == 3
    first = [r for r in written if r["image_id"] == 11 and r["category_id"] == 7][0]
    assert first["bbox"] == [55.0, 20.0, 40.0, 50.0] and first["score"] == pytest.approx(0.9)
    assert {r["category_id"] for r in written} == {3, 7}  # json ids, not contiguous


def test_shifted_box_counts_at_iou50_not_iou75(dataset, tmp_path):
    # Shift the 40x40 box of image 11 right by 12 px: IoU = (28*40) / (2*1600 - 28*40) = 1120/2080 = 0.538.
    inter = 28 * 40
    iou = inter / (2 * 1600 - inter)
    assert 0.5 < iou < 0.55
    preds = {0: _pred([[22, 10, 62, 50], [55, 20, 95, 70]], [1, 2]), 1: _pred([[0, 0, 50, 40]], [2])}
    res = evaluate(dataset, preds, None)
    assert res["AP50"] == pytest.approx(1.0)
    # class "a" (one GT) is a miss at IoU 0.75 -> AP75 = mean(0, 1) = 0.5. At the 10 thresholds
    # 0.5..0.95 class "a" is found only at 0.50 -> AP_a = 0.1; AP = (0.1 + 1) / 2.
    assert res["AP75"] == pytest.approx(0.5)
    assert res["AP"] == pytest.approx((0.1 + 1.0) / 2)


def test_empty_predictions_give_zero(dataset, tmp_path):
    empty = {0: _pred([], []), 1: _pred([], [])}
    res = evaluate(dataset, empty, str(tmp_path / "e"))
    assert res == {k: 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    assert json.loads((tmp_path / "e" / "bbox.json").read_text()) == []
    assert evaluate(dataset, {}, None)["AP"] == 0.0


def test_list_predictions_and_wrong_size(dataset):
    preds = [_pred([[10, 10, 50, 50], [55, 20, 95, 70]], [1, 2]), _pred([[0, 0, 50, 40]], [2])]
    assert evaluate(dataset, preds, None)["AP"] == 1.0
    with pytest.raises(ValueError, match="original image size"):
        evaluate(dataset, {0: _pred([[1, 1, 5, 5]], [1], size=(50, 40))}, None)
    with pytest.raises(ValueError, match=r"labels \[3\]"):
        evaluate(dataset, {0: _pred([[1, 1, 5, 5]], [3])}, None)
