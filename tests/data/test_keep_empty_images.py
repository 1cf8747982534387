"""DATALOADER.KEEP_EMPTY_IMAGES: training images without boxes are kept (as negatives) or dropped."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from maskrcnn_benchmark.config import cfg as base_cfg
from maskrcnn_benchmark.data import make_data_loader


@pytest.fixture(scope="module")
def empty_coco(tmp_path_factory):
    """4 images: 0 and 2 have a box, 1 has none, 3 has only a crowd box."""
    root = str(tmp_path_factory.mktemp("empty_coco"))
    images, anns = [], []
    for i in range(4):
        cv2.imwrite(os.path.join(root, f"{i}.png"), np.full((40, 60, 3), 30 * i, np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 40, "width": 60})
    anns.append({"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0})
    anns.append({"id": 2, "image_id": 3, "category_id": 1, "bbox": [10, 5, 20, 30], "area": 600, "iscrowd": 0})
    anns.append({"id": 3, "image_id": 4, "category_id": 1, "bbox": [10, 5, 20, 30], "area": 600, "iscrowd": 1})
    ann = os.path.join(root, "ann.json")
    with open(ann, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}, f)
    return f"{ann}:{root}"


def _cfg(dataset, keep):
    c = base_cfg.clone()
    c.merge_from_list(["DATASETS.TRAIN", (dataset,), "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 6,
                       "DATALOADER.NUM_WORKERS", 0, "DATALOADER.SIZE_DIVISIBILITY", 32,
                       "INPUT.MIN_SIZE_TRAIN", (48,), "INPUT.MAX_SIZE_TRAIN", 100, "INPUT.FLIP_PROB_TRAIN", 0.5,
                       "DATALOADER.KEEP_EMPTY_IMAGES", keep, "SEED", 3])
    return c


def test_default_drops_images_without_boxes(empty_coco):
    loader = make_data_loader(_cfg(empty_coco, False), is_train=True)
    assert len(loader.dataset) == 2
    assert [loader.dataset.get_img_info(i)["id"] for i in range(2)] == [1, 3]


def test_keep_empty_images_trains_them_as_negatives(empty_coco):
    loader = make_data_loader(_cfg(empty_coco, True), is_train=True)
    dataset = loader.dataset
    assert [dataset.get_img_info(i)["id"] for i in range(len(dataset))] == [1, 2, 3, 4]
    boxes_seen = {}
    for images, targets, indices in loader:  # resized (48 px shorter side) and flipped like any image
        for (h, w), target, idx in zip(images.image_sizes, targets, indices):
            assert (h, w) == (48, 72) and target.size == (72, 48)
            assert target.bbox.shape[1] == 4 and len(target.get_field("labels")) == len(target)
            boxes_seen[dataset.get_img_info(idx)["id"]] = len(target)
    assert boxes_seen == {1: 1, 2: 0, 3: 1, 4: 0}  # the crowd-only image is a negative too
    empty = dataset[1][1]
    assert empty.bbox.dtype == torch.float32 and empty.get_field("labels").dtype == torch.int64
