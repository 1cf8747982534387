"""Drawing detections: pixels change inside the boxes only, captions, PNG round trip."""
import cv2
import numpy as np
import torch

from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.utils.visualize import class_color, draw_boxlist, draw_detections, write_png


def test_draw_detections_marks_box_outline_only():
    img = np.zeros((60, 80, 3), np.uint8)
    out = draw_detections(img, np.array([[10.0, 20.0, 50.0, 55.0]]), np.array([1]), np.array([0.9]),
                          ["__background__", "cat"], thickness=1)
    assert out.shape == img.shape and out.dtype == np.uint8 and img.sum() == 0  # input untouched
    assert (out[20, 30] == class_color(1)).all()  # top edge
    assert out[40, 30].sum() == 0  # interior
    assert out[58, 75].sum() == 0  # outside


def test_threshold_skips_low_scores():
    img = np.zeros((40, 40, 3), np.uint8)
    out = draw_detections(img, np.array([[5.0, 5.0, 30.0, 30.0]]), np.array([2]), np.array([0.1]),
                          score_threshold=0.5)
    assert out.sum() == 0


def test_draw_boxlist_rescales_and_writes_png(tmp_path):
    img = np.zeros((50, 100, 3), np.uint8)
    det = BoxList(torch.tensor([[5.0, 5.0, 20.0, 20.0]]), (50, 25))  # half-size prediction
    det.add_field("labels", torch.tensor([1]))
    det.add_field("scores", torch.tensor([0.8]))
    out = draw_boxlist(img, det, ["__background__", "dog"])
    assert (out[10, 20] == class_color(1)).all()  # (10, 10) scaled x2 -> top-left corner region
    path = str(tmp_path / "sub" / "vis.png")
    write_png(path, out)
    assert np.array_equal(cv2.imread(path), out)
