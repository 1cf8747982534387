"""Pascal VOC: the reader (box frame, difficult objects, malformed XML), the catalog forms, the VOC AP
against hand-computed values (both metrics), and synthetic VOC -> dataset -> evaluation end to end."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from maskrcnn_benchmark.config.paths_catalog import DatasetCatalog, split_voc_path
from maskrcnn_benchmark.data.datasets import PascalVOCDataset
from maskrcnn_benchmark.data.datasets.evaluation import evaluate
from maskrcnn_benchmark.data.datasets.evaluation.voc_eval import voc_ap
from maskrcnn_benchmark.engine.inference import dataset_folder_name
from maskrcnn_benchmark.structures.bounding_box import BoxList

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_tool(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _xml(width, height, objects):
    """objects: (name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult)."""
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    return f"<annotation><size><width>{width}</width><height>{height}</height></size>{objs}</annotation>"


def _write_voc(root, images, split="test"):
    """images: {id: (width, height, objects)}; writes black JPEGs, the XMLs and ImageSets/Main/<split>.txt."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for img_id, (w, h, objs) in images.items():
        cv2.imwrite(os.path.join(root, "JPEGImages", f"{img_id}.jpg"), np.zeros((h, w, 3), np.uint8))
        with open(os.path.join(root, "Annotations", f"{img_id}.xml"), "w") as f:
            f.write(_xml(w, h, objs))
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("\n".join(images) + "\n")
    return str(root)


# VOC (1-based inclusive) boxes of the hand-computed AP case; continuous frame = (x-1, y-1, x, y)
HAND = {
    "A": (60, 60, [("a", (1, 1, 10, 10), 0), ("a", (21, 21, 30, 30), 0), ("a", (41, 41, 50, 50), 1)]),
    "B": (70, 60, [("a", (1, 1, 10, 10), 0), ("b", (1, 1, 10, 10), 0)]),
}


@pytest.fixture
def hand_voc(tmp_path):
    return PascalVOCDataset(_write_voc(tmp_path / "voc", HAND), "test", class_names=["a", "b", "c"])


def test_reader_box_frame_difficult_and_training_targets(hand_voc, tmp_path):
    assert len(hand_voc) == 2 and hand_voc.class_names == ["__background__", "a", "b", "c"]
    boxes, labels, difficult = hand_voc.get_annotation(0)
    # 1-based inclusive (1, 1, 10, 10) -> continuous (0, 0, 10, 10): the same 10 px width as VOC's +1 width
    assert boxes.tolist() == [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]
    assert labels.tolist() == [1, 1, 1] and difficult.tolist() == [False, False, True]
    target = hand_voc.get_groundtruth(0)  # difficult objects kept out of training
    assert target.bbox.tolist() == [[0, 0, 10, 10], [20, 20, 30, 30]] and target.size == (60, 60)
    image, target, idx = hand_voc[1]
    assert image.shape == (60, 70, 3) and idx == 1 and target.get_field("labels").tolist() == [1, 2]
    assert hand_voc.get_img_info(1) == {"height": 60, "width": 70, "id": "B", "file_name": "B.jpg"}
    with_difficult = PascalVOCDataset(hand_voc.root, "test", use_difficult=True, class_names=["a", "b", "c"])
    assert len(with_difficult.get_groundtruth(0)) == 3
    # default class names: sorted names found (not all VOC classes); the VOC 20 when they all are
    assert PascalVOCDataset(hand_voc.root, "test").class_names == ["__background__", "a", "b"]
    voc_root = _write_voc(tmp_path / "voc20", {"x": (20, 20, [("dog", (2, 2, 5, 5), 0)])}, "val")
    ds = PascalVOCDataset(voc_root, "val")
    assert ds.num_classes == 20 and ds.class_names[12] == "dog" and ds.get_annotation(0)[1].tolist() == [12]


def test_training_drops_images_with_only_difficult_objects(tmp_path):
    root = _write_voc(tmp_path / "v", {"p": (20, 20, [("a", (2, 2, 5, 5), 1)]), "q": (20, 20, [("a", (2, 2, 5, 5), 0)])},
                      "train")
    assert PascalVOCDataset(root, "train", remove_images_without_annotations=True).ids == ["q"]
    assert PascalVOCDataset(root, "train").ids == ["p", "q"]


@pytest.mark.parametrize("content, match", [
    ("<annotation><size><width>10", "not valid XML"),
    ("<annotation><object><name>a</name></object></annotation>", "no <size>"),
    (_xml(10, 10, [("a", (1, 1, 5, 5), 0)]).replace("<ymax>5</ymax>", ""), "no <ymax>"),
    (_xml(10, 10, [("a", (1, 1, 5, 5), 0)]).replace("<xmin>1</xmin>", "<xmin>one</xmin>"), "not a number"),
    (_xml(10, 10, [("a", (6, 1, 5, 5), 0)]), "xmax < xmin"),
])
def test_malformed_xml_names_the_file(tmp_path, content, match):
    root = _write_voc(tmp_path / "bad", {"ok": (10, 10, [("a", (1, 1, 5, 5), 0)]), "broken": (10, 10, [])})
    bad = os.path.join(root, "Annotations", "broken.xml")
    with open(bad, "w") as f:
        f.write(content)
    with pytest.raises(ValueError, match=match) as e:
        PascalVOCDataset(root, "test")
    assert bad in str(e.value)


def test_missing_split_and_annotation_name_the_file(tmp_path):
    root = _write_voc(tmp_path / "v", {"x": (10, 10, [("a", (1, 1, 5, 5), 0)])})
    with pytest.raises(FileNotFoundError, match="ImageSets/Main/nope.txt"):
        PascalVOCDataset(root, "nope")
    os.remove(os.path.join(root, "Annotations", "x.xml"))
    with pytest.raises(FileNotFoundError, match="x.xml"):
        PascalVOCDataset(root, "test")


def test_missing_images_found_when_built(tmp_path):
    root = _write_voc(tmp_path / "v", {i: (10, 10, [("a", (1, 1, 5, 5), 0)]) for i in ("x", "y", "z")})
    for i in ("x", "z"):
        os.remove(os.path.join(root, "JPEGImages", f"{i}.jpg"))
    with pytest.raises(FileNotFoundError, match=r"2 of 3 image files listed in .*test\.txt do not exist under "
                                                r".*JPEGImages: 'x\.jpg', 'z\.jpg'$"):
        PascalVOCDataset(root, "test")


def test_catalog_voc_forms(tmp_path, monkeypatch):
    root = _write_voc(tmp_path / "VOCdevkit" / "VOC2007", {"x": (10, 10, [("a", (1, 1, 5, 5), 0)])})
    assert split_voc_path(f"{root}:test") == (root, "test")
    assert split_voc_path(f"{tmp_path}:test") is None  # not a VOC folder
    got = DatasetCatalog.get(f"{root}:test")
    assert got == {"factory": "PascalVOCDataset", "args": {"data_dir": root, "split": "test"}}
    with pytest.raises(KeyError, match="no split"):
        DatasetCatalog.get(f"{root}:")
    with pytest.raises(KeyError, match="<VOC root>:<split>"):
        DatasetCatalog.get(f"{tmp_path}/nothing:test")
    monkeypatch.setenv("MASKRCNN_BENCHMARK_DATA_DIR", "/data")
    assert DatasetCatalog.get("voc_2007_test")["args"] == {"data_dir": "/data/voc/VOC2007", "split": "test"}
    assert DatasetCatalog.get("voc_2012_trainval")["args"] == {"data_dir": "/data/voc/VOC2012", "split": "trainval"}
    assert dataset_folder_name(f"{root}:test") == "VOC2007_test"


def _pred(boxes, scores, labels, size):
    p = BoxList(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), size)
    p.add_field("scores", torch.tensor(scores, dtype=torch.float32))
    p.add_field("labels", torch.tensor(labels, dtype=torch.int64))
    return p


def _hand_predictions():
    # class a (3 non-difficult GT): A: d1 0.9 TP, d2 0.8 duplicate FP, d3 0.7 on the difficult box (ignored),
    # d6 0.4 IoU 0.4 FP; B: d5 0.65 TP, d4 0.6 FP. Class b: one exact hit. Class c: no GT (left out of mAP).
    a = _pred([[0, 0, 10, 10], [0, 0, 10, 10], [40, 40, 50, 50], [20, 20, 24, 30]], [0.9, 0.8, 0.7, 0.4],
              [1, 1, 1, 1], (60, 60))
    b = _pred([[50, 50, 60, 60], [0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 9, 9]], [0.6, 0.65, 0.3, 0.2], [1, 1, 2, 3],
              (70, 60))
    return {0: a, 1: b}


def test_voc_ap_hand_computed_both_metrics(hand_voc, tmp_path):
    # class a in score order: TP, FP, TP, FP, FP -> recall 1/3, 1/3, 2/3, 2/3, 2/3, precision 1, 1/2, 2/3, 1/2, 2/5
    # area: 1/3 * 1 + 1/3 * 2/3 = 5/9; 11-point: t = 0..0.3 -> 1, t = 0.4..0.6 -> 2/3, t >= 0.7 -> 0 -> 6/11
    area = evaluate(hand_voc, _hand_predictions(), str(tmp_path / "o"), voc_metric="area")
    assert area.per_class["a"]["AP50"] == pytest.approx(5 / 9)
    assert area.per_class["b"]["AP50"] == pytest.approx(1.0) and area.per_class["c"]["AP50"] == -1.0
    assert area["mAP"] == pytest.approx((5 / 9 + 1) / 2) and set(area) == {"mAP"}
    eleven = evaluate(hand_voc, _hand_predictions(), None, voc_metric="11point")
    assert eleven.per_class["a"]["AP50"] == pytest.approx(6 / 11)
    assert eleven["mAP"] == pytest.approx((6 / 11 + 1) / 2) and eleven.info["metric"] == "11point"
    if area.info.get("pr_curves"):
        assert os.path.isfile(area.info["pr_curves"])
    # the AP formulas alone, on the same curve
    rec, prec = np.array([1, 1, 2, 2, 2]) / 3, np.array([1, 1 / 2, 2 / 3, 1 / 2, 2 / 5])
    assert voc_ap(rec, prec, "area") == pytest.approx(5 / 9) and voc_ap(rec, prec, "11point") == pytest.approx(6 / 11)
    with pytest.raises(ValueError, match="TEST.VOC_METRIC"):
        evaluate(hand_voc, _hand_predictions(), None, voc_metric="07")


def test_voc_eval_rejects_wrong_size_and_labels(hand_voc):
    with pytest.raises(ValueError, match="original image"):
        evaluate(hand_voc, {0: _pred([[0, 0, 1, 1]], [0.5], [1], (30, 30))}, None)
    with pytest.raises(ValueError, match=r"labels \[4\]"):
        evaluate(hand_voc, {0: _pred([[0, 0, 1, 1]], [0.5], [4], (60, 60))}, None)


def test_synthetic_voc_end_to_end(tmp_path):
    """--format voc -> "<root>:<split>" dataset -> ground truth as detections gives mAP 1 -> test_net runs
    (with and without TTA) and writes the VOC metrics."""
    from maskrcnn_benchmark.data import build_dataset
    from maskrcnn_benchmark.data.synthetic import CATEGORIES

    tool = _load_tool("make_synthetic_coco")
    out = str(tmp_path / "synth_voc")
    assert tool.main(["--out", out, "--format", "voc", "--num-train", "3", "--num-val", "3", "--image-size", "96",
                      "--seed", "1"]) == 0
    ds = build_dataset([f"{out}:val"], None, DatasetCatalog, is_train=False)[0]
    assert isinstance(ds, PascalVOCDataset) and len(ds) == 3 and set(ds.class_names[1:]) <= set(CATEGORIES)
    preds = {}
    for i in range(len(ds)):
        gt = ds.get_groundtruth(i)
        gt.add_field("scores", torch.ones(len(gt)))
        preds[i] = gt
    assert evaluate(ds, preds, None)["mAP"] == pytest.approx(1.0)

    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", f"('{out}:train',)", "DATASETS.TEST", f"('{out}:val',)",
            "OUTPUT_DIR", str(tmp_path / "run"), "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "3",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "MODEL.ATSS.INFERENCE_TH", "0.0",
            "MODEL.ATSS.NUM_CLASSES", "0", "TEST.VOC_METRIC", "11point"]
    for extra in ([], ["TEST.BBOX_AUG.ENABLED", "True", "TEST.BBOX_AUG.H_FLIP", "True",
                       "TEST.BBOX_AUG.SCALES", "(48,)", "TEST.DETECTIONS_PER_IMG", "5"]):
        torch.manual_seed(0)
        results = _load_tool("test_net").main(["--config-file", os.path.join(ROOT, "configs/atss/atss_R_18_FPN_small.yaml"), *opts, *extra])
        metrics = json.loads((tmp_path / "run" / "inference" / "synth_voc_val" / "metrics.json").read_text())
        assert set(results[f"{out}:val"]) == {"mAP"} and 0.0 <= metrics["bbox"]["mAP"] <= 1.0
        assert set(metrics["per_class"]) == set(ds.class_names[1:]) and metrics["evaluation"]["metric"] == "11point"
        assert (metrics["test_time_augmentation"] is None) == (not extra)
    # the visualiser with TTA draws the merged detections
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer
    from maskrcnn_benchmark.config import setup_cfg

    cfg = setup_cfg(os.path.join(ROOT, "configs/atss/atss_R_18_FPN_small.yaml"),
                    opts[:-2] + ["MODEL.ATSS.NUM_CLASSES", str(ds.num_classes + 1)])
    weights = Checkpointer(build_detection_model(cfg), save_dir=str(tmp_path / "w"), save_to_disk=True).save("m")
    written = _load_tool("visualize_detections").main(
        ["--config-file", os.path.join(ROOT, "configs/atss/atss_R_18_FPN_small.yaml"), "--images",
         os.path.join(out, "JPEGImages", "val_000001.jpg"), "--output-dir", str(tmp_path / "vis"),
         "--score-threshold", "0.0", *opts, *extra, "MODEL.WEIGHT", weights])
    assert len(written) == 1 and os.path.isfile(written[0])


def test_truncated_voc_image_is_an_error_or_skipped(tmp_path):
    from maskrcnn_benchmark.data.datasets.base import CorruptImageError

    root = _write_voc(tmp_path / "voc", HAND)
    path = os.path.join(root, "JPEGImages", "A.jpg")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # no end-of-image marker: libjpeg would fill it with grey
    with pytest.raises(CorruptImageError, match=r"A\.jpg.*truncated JPEG.*SKIP_CORRUPT_IMAGES"):
        PascalVOCDataset(root, "test", class_names=["a", "b", "c"])[0]
    ds = PascalVOCDataset(root, "test", class_names=["a", "b", "c"], skip_corrupt_images=True)
    image, target, index = ds[(0, 3)]
    assert index == 1 and image.shape == (60, 70, 3) and ds.num_skipped_images == 1
    assert target.get_field("labels").tolist() == [1, 2]


@pytest.mark.parametrize("remove_empty,use_difficult", [(False, False), (True, False), (True, True)])
def test_records_give_the_parsed_xml(tmp_path, remove_empty, use_difficult):
    """Every image's info, annotation and target equal the plain reference from ``parse_voc_xml``
    (images without objects, with only difficult objects, many objects)."""
    from maskrcnn_benchmark.data.datasets.voc import parse_voc_xml

    rng = np.random.default_rng(5)
    images = {}
    for k in range(12):
        w, h = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        objs = []
        for _ in range(int(rng.integers(0, 5)) if k % 4 else 0):
            x1, y1 = int(rng.integers(1, w // 2)), int(rng.integers(1, h // 2))
            objs.append((["a", "b", "c"][int(rng.integers(0, 3))], (x1, y1, int(rng.integers(x1, w + 1)),
                                                                   int(rng.integers(y1, h + 1))), k == 5 or rng.random() < 0.2))
        images[f"im{k:02d}"] = (w, h, objs)
    root = _write_voc(tmp_path / "voc", images, split="train")
    ds = PascalVOCDataset(root, "train", class_names=["a", "b", "c"], use_difficult=use_difficult,
                          remove_images_without_annotations=remove_empty)
    label = {"a": 1, "b": 2, "c": 3}
    ref = [(i, parse_voc_xml(os.path.join(root, "Annotations", f"{i}.xml"))) for i in images]
    if remove_empty:
        ref = [(i, p) for i, p in ref if (use_difficult and len(p["names"])) or (~p["difficult"]).any()]
    assert ds.ids == [i for i, _ in ref] and len(ds) == len(ref)
    assert (len(ref) < 12) == remove_empty
    for n, (img_id, p) in enumerate(ref):
        assert ds.get_img_info(n) == {"height": p["height"], "width": p["width"], "id": img_id,
                                      "file_name": f"{img_id}.jpg"}
        boxes, labels, difficult = ds.get_annotation(n)
        assert np.array_equal(boxes, p["boxes"]) and np.array_equal(difficult, p["difficult"])
        assert labels.tolist() == [label[name] for name in p["names"]] and labels.dtype == np.int64
        keep = np.ones(len(p["names"]), bool) if use_difficult else ~p["difficult"]
        target = ds.get_groundtruth(n)
        assert target.size == (p["width"], p["height"])
        assert np.array_equal(target.bbox.numpy(), p["boxes"][keep])
        assert target.get_field("labels").tolist() == [label[name] for name, k in zip(p["names"], keep) if k]
