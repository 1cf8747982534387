"""Predictor: same detections as the evaluation path (compute_on_dataset over the test loader)."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from maskrcnn_benchmark.config import setup_cfg
from maskrcnn_benchmark.data import make_data_loader
from maskrcnn_benchmark.engine.inference import compute_on_dataset
from maskrcnn_benchmark.data.datasets.base import CorruptImageError
from maskrcnn_benchmark.engine.predictor import Detections, Predictor, read_image
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.utils.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_CONFIG = os.path.join(ROOT, "configs", "atss", "atss_R_18_FPN_small.yaml")
SIZES = [(64, 48), (80, 56), (50, 70)]  # (w, h), different sizes: the batch is padded


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pred"))
    rng = np.random.default_rng(0)
    images, anns, paths = [], [], []
    for i, (w, h) in enumerate(SIZES):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        cv2.rectangle(img, (8, 6), (40, 36), (0, 200, 255), -1)
        paths.append(os.path.join(root, f"{i}.png"))
        cv2.imwrite(paths[-1], img)
        images.append({"id": 5 + i, "file_name": f"{i}.png", "height": h, "width": w})
        anns.append({"id": i + 1, "image_id": 5 + i, "category_id": 3, "bbox": [8, 6, 32, 30], "area": 960,
                     "iscrowd": 0})
    ann = os.path.join(root, "ann.json")
    with open(ann, "w") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": 3, "name": "box"}, {"id": 9, "name": "other"}]}, f)
    dataset = f"{ann}:{root}"
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TEST", f"('{dataset}',)", "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160", "MODEL.ATSS.INFERENCE_TH", "0.0",
            "TEST.DETECTIONS_PER_IMG", "50"]
    cfg = setup_cfg(SMALL_CONFIG, opts + ["MODEL.ATSS.NUM_CLASSES", "3"])
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    with torch.no_grad():  # make the random head's scores spread out (no ties near the top)
        model.rpn.head.cls_logits.bias.normal_(0.0, 1.0)
    weights = Checkpointer(model, save_dir=os.path.join(root, "w"), save_to_disk=True).save("m")
    return dict(root=root, paths=paths, opts=opts, weights=weights)


def _reference(setup, ims_per_batch):
    """Detections of the test_net path: test loader + compute_on_dataset, same weights."""
    cfg = setup_cfg(SMALL_CONFIG, setup["opts"] + ["MODEL.ATSS.NUM_CLASSES", "3", "TEST.IMS_PER_BATCH",
                                                   str(ims_per_batch)])
    model = build_detection_model(cfg)
    Checkpointer(model, save_to_disk=False).load_weights(setup["weights"])
    return compute_on_dataset(model, make_data_loader(cfg, is_train=False)[0], torch.device("cpu"))


def _assert_same(det: Detections, ref, size):
    assert isinstance(det, Detections) and det.image_size == size and len(det) == len(ref) > 0
    np.testing.assert_allclose(det.boxes, ref.bbox.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(det.scores, ref.get_field("scores").numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(det.labels, ref.get_field("labels").numpy())
    assert det.names == [["__background__", "box", "other"][i] for i in det.labels]
    assert (det.boxes[:, 2] <= size[0] + 1e-3).all() and (det.boxes[:, 3] <= size[1] + 1e-3).all()


def test_single_images_match_test_net(setup):
    # NUM_CLASSES 0 in the config: taken from the test json's 2 categories (3 with background)
    predictor = Predictor(SMALL_CONFIG, setup["weights"], opts=setup["opts"], device="cpu")
    assert predictor.class_names == ["__background__", "box", "other"]
    ref = _reference(setup, 1)
    for i, path in enumerate(setup["paths"]):
        _assert_same(predictor(path), ref[i], SIZES[i])
        _assert_same(predictor(cv2.imread(path)), ref[i], SIZES[i])  # BGR array input


def test_batched_call_matches_batched_test_net(setup):
    # the reference runs the unprepared model: compare like with like (prepared = float rounding, ties)
    predictor = Predictor(SMALL_CONFIG, setup["weights"], device="cpu", opts=setup["opts"] + [
        "TEST.MEMORY_FORMAT", "contiguous", "TEST.FOLD_FROZEN_BN", False])
    ref = _reference(setup, 3)  # one padded batch of the 3 images
    dets = predictor(setup["paths"])
    assert isinstance(dets, list) and len(dets) == 3
    for i, det in enumerate(dets):
        _assert_same(det, ref[i], SIZES[i])


def test_score_threshold_and_class_names_fallback(setup):
    opts = [o for o in setup["opts"]]
    opts[opts.index("DATASETS.TEST") + 1] = "()"
    predictor = Predictor(SMALL_CONFIG, setup["weights"], opts=opts + ["MODEL.ATSS.NUM_CLASSES", "3"],
                          device="cpu", score_threshold=0.5)
    assert predictor.class_names == ["__background__", "class_1", "class_2"]
    det = predictor(setup["paths"][0])
    assert (det.scores >= 0.5).all()


def test_class_names_from_checkpoint_metadata(setup, tmp_path):
    data = torch.load(setup["weights"], weights_only=True)
    data["class_names"] = ["__background__", "cat", "dog"]
    path = str(tmp_path / "meta.pth")
    torch.save(data, path)
    predictor = Predictor(SMALL_CONFIG, path, opts=setup["opts"], device="cpu")
    assert predictor.class_names == ["__background__", "cat", "dog"]


def test_read_image_refuses_truncated_jpeg(tmp_path):
    """OpenCV decodes a truncated JPEG with grey filler; the Predictor refuses it naming the file, as the
    training loader does (the complete file decodes to the written pixels)."""
    import cv2

    image = (np.arange(64 * 48 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    ok, data = cv2.imencode(".jpg", image)
    full, cut = tmp_path / "full.jpg", tmp_path / "cut.jpg"
    full.write_bytes(data.tobytes())
    cut.write_bytes(data.tobytes()[: len(data) // 2])
    assert np.array_equal(read_image(str(full)), cv2.imdecode(data, cv2.IMREAD_COLOR))
    assert cv2.imread(str(cut)) is not None  # what the Predictor used to accept
    with pytest.raises(CorruptImageError, match=r"cut\.jpg: truncated JPEG"):
        read_image(str(cut))


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(str(tmp_path / "nope.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(CorruptImageError, match="bad.jpg: corrupt or not an image"):
        read_image(str(tmp_path / "bad.jpg"))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        read_image(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        read_image(np.zeros((4, 4, 3), np.float32))
    assert read_image(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)


def test_predictor_refuses_weights_missing_tensors(setup, tmp_path):
    data = torch.load(setup["weights"], weights_only=True)
    dropped = sorted(k for k in data["model"] if "bbox_pred" in k)
    data["model"] = {k: v for k, v in data["model"].items() if k not in dropped}
    path = str(tmp_path / "partial.pth")
    torch.save(data, path)
    with pytest.raises(ValueError, match=rf"partial\.pth: {len(dropped)} of the model's tensors are not in it "
                                         rf"\({dropped[0]}"):
        Predictor(SMALL_CONFIG, path, opts=setup["opts"], device="cpu")
