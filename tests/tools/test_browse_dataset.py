"""tools/browse_dataset.py: ground truth drawn after the test / training transforms (pixel checks)."""
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
import torch

from maskrcnn_benchmark.utils.visualize import class_color, denormalize_image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WHITE = (255, 255, 255)


def _tool():
    spec = importlib.util.spec_from_file_location("tools_browse", os.path.join(ROOT, "tools", "browse_dataset.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two white 60x40 images; image 1 has a class-2 box at x 10..40, y 5..30."""
    root = str(tmp_path_factory.mktemp("browse"))
    images = []
    for i in range(2):
        cv2.imwrite(os.path.join(root, f"im{i}.png"), np.full((40, 60, 3), 255, np.uint8))
        images.append({"id": i + 1, "file_name": f"im{i}.png", "height": 40, "width": 60})
    anns = [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 5, 30, 25], "area": 750, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 5, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0}]
    ann = os.path.join(root, "ann.json")
    with open(ann, "w") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": 4, "name": "a"}, {"id": 5, "name": "b"}]}, f)
    return f"{ann}:{root}"


def _opts(ds):
    return ["DATASETS.TRAIN", f"('{ds}',)", "DATASETS.TEST", f"('{ds}',)", "INPUT.MIN_SIZE_TEST", "40",
            "INPUT.MAX_SIZE_TEST", "100", "INPUT.MIN_SIZE_TRAIN", "(80,)", "INPUT.MAX_SIZE_TRAIN", "200",
            "INPUT.FLIP_PROB_TRAIN", "1.0"]


def test_test_transforms(dataset, tmp_path):
    out = str(tmp_path / "vis")
    written = _tool().main(["--output-dir", out, "--num", "1", *_opts(dataset)])
    assert [os.path.relpath(p, out) for p in written] == [os.path.join("ann", "00000_im0.png")]
    image = cv2.imread(written[0])
    assert image.shape == (40, 60, 3)  # the test size equals the image's: no resize
    color = class_color(2)
    assert tuple(image[17, 10]) == color and tuple(image[5, 30]) == color and tuple(image[30, 39]) == color
    assert tuple(image[27, 35]) == WHITE and tuple(image[17, 50]) == WHITE  # inside / outside the box


def test_train_transforms_scale_and_flip(dataset, tmp_path):
    written = _tool().main(["--train", "--output-dir", str(tmp_path), "--num", "5", *_opts(dataset)])
    assert len(written) == 2 and os.path.basename(written[0]) == "00000_im0.png"
    image = cv2.imread(written[0])
    assert image.shape == (80, 120, 3)  # shorter side 80: scale 2
    color = class_color(2)
    # box x 20..80 scaled, then mirrored in a 120 px wide image: x 40..100, y 10..60
    assert tuple(image[35, 40]) == color and tuple(image[35, 100]) == color and tuple(image[60, 70]) == color
    assert tuple(image[35, 20]) == WHITE and tuple(image[50, 70]) == WHITE


@pytest.mark.parametrize("to_bgr255", [True, False])
def test_denormalize_inverts_the_transforms(to_bgr255):
    from maskrcnn_benchmark.data.transforms.transforms import Normalize, ToTensor

    mean, std = ([102.9, 115.9, 122.7], [1.0, 1.0, 1.0]) if to_bgr255 else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    tensor, _ = Normalize(mean, std, to_bgr255)(*ToTensor()(image, None))
    np.testing.assert_array_equal(denormalize_image(tensor, mean, std, to_bgr255), image)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        denormalize_image(torch.zeros(1, 4, 4), mean, std)
