import json
import logging
import re

import cv2
import numpy as np
import pytest
import torch

from maskrcnn_benchmark.config.paths_catalog import DatasetCatalog, ModelCatalog, split_json_path
from maskrcnn_benchmark.data.build import build_dataset, num_foreground_classes
from maskrcnn_benchmark.data.datasets import COCODataset

CATS = [{"id": 90, "name": "zebra"}, {"id": 1, "name": "person"}, {"id": 5, "name": "plane"}]


def _write_dataset(tmp_path, annotations=None, images=None, categories=CATS):
    """Three 40x30 images (id 7, 8, 9); image 9 has no annotation."""
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    images = images if images is not None else [
        {"id": i, "file_name": f"im{i}.png", "height": 30, "width": 40} for i in (7, 8, 9)]
    for im in images:
        cv2.imwrite(str(img_dir / im["file_name"]), np.full((im["height"], im["width"], 3), im["id"], np.uint8))
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 7, "category_id": 90, "bbox": [1, 2, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [20, 10, 5, 5], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 40, 30], "iscrowd": 1},   # crowd
            {"id": 4, "image_id": 8, "category_id": 1, "bbox": [5, 5, 0, 4], "iscrowd": 0},    # zero width
            {"id": 5, "image_id": 8, "category_id": 1, "bbox": [30, 20, 20, 20], "iscrowd": 0},  # partly out
            {"id": 6, "image_id": 8, "category_id": 5, "bbox": [50, 5, 5, 5], "iscrowd": 0},   # fully out
            {"id": 7, "image_id": 8, "category_id": 90, "bbox": [3, 3, -2, 4], "iscrowd": 0},  # negative
        ]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(ann), str(img_dir)


def test_contiguous_ids_crowd_and_filtering(tmp_path, caplog):
    ann, root = _write_dataset(tmp_path)
    with caplog.at_level(logging.INFO, logger="maskrcnn_benchmark.data.datasets.coco"):
        ds = COCODataset(ann, root, remove_images_without_annotations=True)
    assert ds.json_category_id_to_contiguous_id == {1: 1, 5: 2, 90: 3}
    assert ds.contiguous_category_id_to_json_id == {1: 1, 2: 5, 3: 90}
    assert ds.class_names == ["__background__", "person", "plane", "zebra"]
    assert ds.num_classes == 3
    assert ds.ids == [7, 8]  # image 9 has no annotation
    msgs = "\n".join(r.getMessage() for r in caplog.records)
    assert "dropped 2 boxes with zero or negative width/height" in msgs
    assert "dropped 1 boxes entirely outside" in msgs
    assert "clipped 1 boxes" in msgs
    assert "dropped 1 of 3 images" in msgs

    image, target, idx = ds[0]
    assert idx == 0 and image.shape == (30, 40, 3) and image.dtype == np.uint8 and image[0, 0, 0] == 7
    torch.testing.assert_close(target.bbox, torch.tensor([[1.0, 2.0, 11.0, 7.0], [20.0, 10.0, 25.0, 15.0]]))
    assert target.get_field("labels").tolist() == [3, 2]  # crowd box excluded
    assert target.get_field("labels").dtype == torch.int64
    _, target, _ = ds[1]
    torch.testing.assert_close(target.bbox, torch.tensor([[30.0, 20.0, 40.0, 30.0]]))  # clipped
    assert target.get_field("labels").tolist() == [1]
    assert ds.get_img_info(1) == {"height": 30, "width": 40, "id": 8, "file_name": "im8.png"}


def test_test_mode_keeps_every_image_in_order(tmp_path):
    ann, root = _write_dataset(tmp_path)
    ds = COCODataset(ann, root, remove_images_without_annotations=False)
    assert ds.ids == [7, 8, 9]
    _, target, _ = ds[2]
    assert len(target) == 0 and target.get_field("labels").shape == (0,)


def test_transforms_applied(tmp_path):
    ann, root = _write_dataset(tmp_path)
    ds = COCODataset(ann, root, True,
                     transforms=lambda im, t: (torch.from_numpy(im).permute(2, 0, 1), t.resize((20, 15))))
    image, target, _ = ds[0]
    assert image.shape == (3, 30, 40) and target.size == (20, 15)


def test_missing_image_found_when_built(tmp_path):
    ann, root = _write_dataset(tmp_path)
    (tmp_path / "images" / "im8.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 image files listed in .*ann\.json do not exist under "
                                                r".*images: 'im8\.png'$"):
        COCODataset(ann, root, True)
    assert len(COCODataset(ann, root, False, check_image_files=False)) == 3


def test_image_removed_after_build_names_file_and_json(tmp_path):
    ann, root = _write_dataset(tmp_path)
    ds = COCODataset(ann, root, True)
    (tmp_path / "images" / "im8.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"im8\.png.*ann\.json"):
        ds[1]


def test_many_missing_images_counted_and_first_listed(tmp_path):
    images = [{"id": i, "file_name": f"sub/im{i}.png", "height": 30, "width": 40} for i in range(1, 26)]
    (tmp_path / "images" / "sub").mkdir(parents=True)
    ann, root = _write_dataset(tmp_path, annotations=[], images=images)
    for i in range(4, 26):
        (tmp_path / "images" / "sub" / f"im{i}.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        COCODataset(ann, root, False)
    msg = str(err.value)
    assert msg.startswith("22 of 25 image files listed in")
    assert ", ".join(f"'sub/im{i}.png'" for i in range(4, 14)) + ", ..." in msg and "im14.png" not in msg


def test_file_names_outside_the_image_folder_are_counted(tmp_path, caplog):
    ann, root = _write_dataset(tmp_path)
    data = json.loads(open(ann).read())
    outside = tmp_path / "outside.png"
    cv2.imwrite(str(outside), np.zeros((30, 40, 3), np.uint8))
    data["images"][0]["file_name"] = "../outside.png"
    data["images"][1]["file_name"] = str(outside)
    open(ann, "w").write(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="maskrcnn_benchmark.data.datasets.base"):
        ds = COCODataset(ann, root, False)
    assert len(ds) == 3
    msgs = [r.getMessage() for r in caplog.records if "leave the image folder" in r.getMessage()]
    assert len(msgs) == 1 and "2 of 3 file_name entries" in msgs[0] and "'../outside.png'" in msgs[0]


def test_duplicate_annotation_ids_refused(tmp_path):
    ann, root = _write_dataset(tmp_path)
    data = json.loads(open(ann).read())
    for a in data["annotations"][1:4]:
        a["id"] = 1  # 3 annotations reuse id 1
    data["annotations"][5]["id"] = 5  # and one reuses id 5
    open(ann, "w").write(json.dumps(data))
    with pytest.raises(ValueError, match=r"ann\.json: 4 annotation\(s\) reuse an id \(2 distinct id\(s\), "
                                         r"e\.g\. \[1, 5\]\); annotation ids must be unique"):
        COCODataset(ann, root, False)


@pytest.mark.parametrize("value", ["0", "1", None, 2, -1, 0.5, "yes"])
def test_iscrowd_not_0_or_1_refused_with_count(tmp_path, value):
    ann, root = _write_dataset(tmp_path)
    data = json.loads(open(ann).read())
    for a in data["annotations"][:3]:
        a["iscrowd"] = value
    open(ann, "w").write(json.dumps(data))
    with pytest.raises(ValueError, match=rf"ann\.json: 3 annotation\(s\) have an 'iscrowd' that is not 0 or 1 "
                                         rf"\(id 1: {re.escape(repr(value))}; id 2"):
        COCODataset(ann, root, False)


def test_iscrowd_bool_and_float_accepted_as_int(tmp_path):
    ann, root = _write_dataset(tmp_path)
    data = json.loads(open(ann).read())
    data["annotations"][0]["iscrowd"] = False
    data["annotations"][1]["iscrowd"] = 0.0
    data["annotations"][2]["iscrowd"] = True  # the crowd box
    del data["annotations"][3]["iscrowd"]  # absent: not crowd
    open(ann, "w").write(json.dumps(data))
    ds = COCODataset(ann, root, True)
    assert [a["iscrowd"] for a in ds.coco.dataset["annotations"][:3]] == [0, 0, 1]
    assert ds.get_groundtruth(0).get_field("labels").tolist() == [3, 2]  # crowd box excluded as before


def test_corrupt_image_names_file(tmp_path):
    ann, root = _write_dataset(tmp_path)
    (tmp_path / "images" / "im7.png").write_bytes(np.random.default_rng(0).bytes(200))
    ds = COCODataset(ann, root, True)
    with pytest.raises(OSError, match=r"cannot decode image file .*im7\.png"):
        ds[0]


def test_image_size_mismatch(tmp_path):
    ann, root = _write_dataset(tmp_path)
    cv2.imwrite(str(tmp_path / "images" / "im7.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match=r"im7\.png is 10x10"):
        COCODataset(ann, root, True)[0]


def test_malformed_json_gives_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [],\n  "categories": [,]}')
    with pytest.raises(ValueError, match=r"malformed json in annotation file .*bad\.json.*line 2 column 18"):
        COCODataset(str(bad), str(tmp_path), True)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.pop("categories"), r"has no 'categories' key"),
    (lambda d: d["categories"][0].pop("name"), r"categories\[0\] is missing key 'name'"),
    (lambda d: d["annotations"][1].pop("bbox"), r"annotations\[1\] is missing key 'bbox'"),
    (lambda d: d["images"][0].pop("file_name"), r"images\[0\] is missing key 'file_name'"),
    (lambda d: d["annotations"][0].update(category_id=3), r"category_id 3 which is not in 'categories'"),
])
def test_missing_keys_name_key_and_json(tmp_path, mutate, match):
    ann, root = _write_dataset(tmp_path)
    data = json.loads(open(ann).read())
    mutate(data)
    open(ann, "w").write(json.dumps(data))
    with pytest.raises(ValueError, match=match) as err:
        COCODataset(ann, root, True)
    assert ann in str(err.value)


def test_catalog_names_and_path_form(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKRCNN_BENCHMARK_DATA_DIR", str(tmp_path / "data"))
    got = DatasetCatalog.get("coco_2017_val")
    assert got["factory"] == "COCODataset"
    assert got["args"]["ann_file"] == str(tmp_path / "data" / "coco/annotations/instances_val2017.json")
    assert got["args"]["root"] == str(tmp_path / "data" / "coco/val2017")
    for name in ("coco_2014_minival", "coco_2014_valminusminival", "coco_2017_test_dev", "coco_2017_train"):
        assert DatasetCatalog.get(name)["factory"] == "COCODataset"

    ann, root = _write_dataset(tmp_path)
    got = DatasetCatalog.get(f"{ann}:{root}")
    assert got["args"] == {"root": root, "ann_file": ann}
    assert split_json_path("a:b/x.json:c:d") == ("a:b/x.json", "c:d")
    assert split_json_path("x.JSON:imgs") == ("x.JSON", "imgs")
    assert split_json_path("no_json_here:imgs") is None
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        DatasetCatalog.get(f"{tmp_path}/nope.json:{root}")
    with pytest.raises(FileNotFoundError, match=r"image folder"):
        DatasetCatalog.get(f"{ann}:{tmp_path}/no_images")


def test_unknown_dataset_lists_names(tmp_path):
    for exc in (KeyError, ValueError):
        with pytest.raises(exc, match=r"unknown dataset 'coco_2099'.*coco_2017_train.*synthetic_coco_train.*json"):
            DatasetCatalog.get("coco_2099")


def test_model_catalog_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKRCNN_BENCHMARK_MODELS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"downloaded? .*manually.*R-50\.pkl"):
        ModelCatalog.get("catalog://ImageNetPretrained/MSRA/R-50")
    path = tmp_path / "ImageNetPretrained" / "MSRA" / "R-50.pkl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    assert ModelCatalog.get("catalog://ImageNetPretrained/MSRA/R-50") == str(path)
    with pytest.raises(KeyError, match="unknown model"):
        ModelCatalog.get("catalog://ImageNetPretrained/MSRA/R-9000")


class _Catalog:
    def __init__(self, mapping):
        self.mapping = mapping

    def get(self, name):
        return dict(factory="COCODataset", args=self.mapping[name])


def test_build_dataset_concat_and_class_agreement(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    b = tmp_path / "b"
    b.mkdir()
    ann_a, root_a = _write_dataset(a)
    ann_b, root_b = _write_dataset(b, categories=CATS + [{"id": 6, "name": "car"}])
    cat = _Catalog({"a": dict(ann_file=ann_a, root=root_a), "a2": dict(ann_file=ann_a, root=root_a),
                    "b": dict(ann_file=ann_b, root=root_b)})
    train = build_dataset(["a", "a2"], None, cat, is_train=True)
    assert len(train) == 1 and len(train[0]) == 4
    assert num_foreground_classes(train) == 3
    test = build_dataset(["a", "a2"], None, cat, is_train=False)
    assert [len(d) for d in test] == [3, 3]
    with pytest.raises(ValueError, match=r"a has 3 foreground classes.*b has 4"):
        build_dataset(["a", "b"], None, cat, is_train=True)


# ---- silent wrong input ---------------------------------------------------------------------------
def test_duplicate_image_id_is_error_naming_it(tmp_path):
    images = [{"id": 7, "file_name": "im7.png", "height": 30, "width": 40},
              {"id": 7, "file_name": "other.png", "height": 30, "width": 40}]
    ann, root = _write_dataset(tmp_path, images=images,
                               annotations=[{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(ValueError, match=r"image id 7 appears more than once"):
        COCODataset(ann, root, True)


@pytest.mark.parametrize("field, value", [("height", "30"), ("width", 40.5), ("height", 0), ("width", True)])
def test_image_size_must_be_positive_int(tmp_path, field, value):
    ann, root = _write_dataset(tmp_path)
    data = json.loads(open(ann).read())
    data["images"][1][field] = value
    open(ann, "w").write(json.dumps(data))
    with pytest.raises(ValueError) as e:
        COCODataset(ann, root, True)
    msg = str(e.value)
    assert "image id 8" in msg and "im8.png" in msg and f"{field} {value!r}" in msg and ann in msg


def test_inf_bbox_dropped_and_counted_like_nan(tmp_path, caplog):
    anns = [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 2, 10, 5]},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [1, 2, float("inf"), 5]},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [1, 2, 4, float("nan")]},
            {"id": 4, "image_id": 8, "category_id": 1, "bbox": [float("-inf"), 2, 4, 4]}]
    ann, root = _write_dataset(tmp_path, annotations=anns)
    with caplog.at_level(logging.INFO, logger="maskrcnn_benchmark.data.datasets.coco"):
        ds = COCODataset(ann, root, True)
    assert ds.ids == [7]
    torch.testing.assert_close(ds[0][1].bbox, torch.tensor([[1.0, 2.0, 11.0, 7.0]]))
    assert "dropped 3 boxes with zero or negative width/height or a non-finite" in caplog.text


def test_test_set_without_annotations_warns(tmp_path, caplog):
    ann, root = _write_dataset(tmp_path, annotations=[])
    with caplog.at_level(logging.WARNING, logger="maskrcnn_benchmark.data.datasets.coco"):
        ds = COCODataset(ann, root, remove_images_without_annotations=False)
    assert len(ds) == 3
    assert "has no annotations" in caplog.text and "AP -1" in caplog.text and ann in caplog.text


def _jpeg_dataset(tmp_path):
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 8, 8]} for i in (1, 2, 3)]
    images = [{"id": i, "file_name": f"im{i}.jpg", "height": 30, "width": 40} for i in (1, 2, 3)]
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for i in (1, 2, 3):
        cv2.imwrite(str(img_dir / f"im{i}.jpg"), np.full((30, 40, 3), 50 * i, np.uint8))
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    data = (img_dir / "im2.jpg").read_bytes()
    (img_dir / "im2.jpg").write_bytes(data[: len(data) * 2 // 3])  # truncated: libjpeg fills grey
    return str(ann), str(img_dir)


def test_truncated_jpeg_is_error_naming_file(tmp_path):
    ann, root = _jpeg_dataset(tmp_path)
    ds = COCODataset(ann, root, True)
    assert ds[0][0][0, 0, 0] == 50
    with pytest.raises(OSError, match=r"im2\.jpg: truncated JPEG.*image id 2.*SKIP_CORRUPT_IMAGES"):
        ds[1]
    png = tmp_path / "images" / "p.png"
    cv2.imwrite(str(png), np.zeros((30, 40, 3), np.uint8))
    png.write_bytes(png.read_bytes()[:-20])
    from maskrcnn_benchmark.data.datasets.coco import decode_image_file

    with pytest.raises(OSError, match=r"p\.png: truncated PNG"):
        decode_image_file(str(png))


def test_truncated_jpeg_skipped_with_counted_warning(tmp_path, caplog):
    ann, root = _jpeg_dataset(tmp_path)
    ds = COCODataset(ann, root, True, skip_corrupt_images=True)
    with caplog.at_level(logging.WARNING, logger="maskrcnn_benchmark.data.datasets.base"):
        image, target, index = ds[1]
        ds[(1, 5)]
    assert index == 2 and image[0, 0, 0] == 150  # the next readable image
    assert ds.num_skipped_images == 2
    assert "im2.jpg" in caplog.text and "2 image(s) skipped so far" in caplog.text


def _reference_targets(data, remove_empty):
    """The documented rules re-derived per annotation in plain Python (the previous implementation's
    behaviour): non-crowd boxes with w, h > 0 and finite values, clipped to the image, dropped when
    nothing is left; per image in json order; images left empty dropped when ``remove_empty``."""
    import math

    to_contiguous = {c: i + 1 for i, c in enumerate(sorted(c["id"] for c in data["categories"]))}
    per_image = {im["id"]: [] for im in data["images"]}
    size = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        if a.get("iscrowd", 0) or not (w > 0 and h > 0) or not all(math.isfinite(v) for v in (x, y, w, h)):
            continue
        W, H = size[a["image_id"]]
        box = [min(max(x, 0), W), min(max(y, 0), H), min(max(x + w, 0), W), min(max(y + h, 0), H)]
        if box[2] > box[0] and box[3] > box[1]:
            per_image[a["image_id"]].append((box, to_contiguous[a["category_id"]]))
    out = []
    for im in data["images"]:
        items = per_image[im["id"]]
        if remove_empty and not items:
            continue
        out.append((im, np.array([b for b, _ in items], np.float32).reshape(-1, 4),
                    np.array([lab for _, lab in items], np.int64)))
    return out


@pytest.mark.parametrize("remove_empty", [True, False])
def test_compact_records_give_the_reference_targets(tmp_path, remove_empty):
    """Random json (unsorted image ids, annotations in random order, crowd / degenerate / NaN /
    partly and fully outside boxes, images without annotations): every image's info and target
    equal the plain per-annotation reference."""
    rng = np.random.default_rng(3)
    ids = rng.permutation(np.arange(1000, 1060)).tolist()
    images = [{"id": i, "file_name": f"dir/{i}\u00e9.jpg", "height": int(rng.integers(20, 90)),
               "width": int(rng.integers(20, 90))} for i in ids]
    anns = []
    for n in range(400):
        im = images[int(rng.integers(0, 45))]  # images 45..59 have no annotation
        x, y = rng.uniform(-20, im["width"] + 5), rng.uniform(-20, im["height"] + 5)
        w, h = rng.uniform(-5, 50, size=2)
        box = [float(x), float(y), float(w), float(h)]
        if n % 53 == 0:
            box[n % 4] = float("nan")
        anns.append({"id": n + 1, "image_id": im["id"], "category_id": CATS[int(rng.integers(0, 3))]["id"],
                     "bbox": box, "iscrowd": int(rng.random() < 0.1)})
    data = {"images": images, "annotations": anns, "categories": CATS}
    ann = tmp_path / "rand.json"
    ann.write_text(json.dumps(data))
    ds = COCODataset(str(ann), str(tmp_path), remove_images_without_annotations=remove_empty, check_image_files=False)
    ref = _reference_targets(data, remove_empty)
    assert len(ds) == len(ref) and (len(ref) < 60) == remove_empty
    assert ds.ids == [im["id"] for im, _, _ in ref]
    assert ds.aspect_ratios() == [im["height"] / im["width"] for im, _, _ in ref]
    for i, (im, boxes, labels) in enumerate(ref):
        info = ds.get_img_info(i)
        assert info == {"height": im["height"], "width": im["width"], "id": im["id"], "file_name": im["file_name"]}
        assert type(info["id"]) is int and type(info["height"]) is int
        target = ds.get_groundtruth(i)
        assert target.size == (im["width"], im["height"])
        assert target.bbox.dtype == torch.float32 and target.get_field("labels").dtype == torch.int64
        assert np.array_equal(target.bbox.numpy(), boxes), i
        assert np.array_equal(target.get_field("labels").numpy(), labels), i
    assert sum(len(b) for _, b, _ in ref) > 150  # a non-trivial set


def test_training_dataset_keeps_no_json_objects(tmp_path):
    import gc
    import pickle

    ann, root = _write_dataset(tmp_path)
    ds = COCODataset(ann, root)
    assert gc.isenabled()  # the pause during the load is undone
    assert "coco" not in vars(ds)  # the pycocotools object is built only when asked for
    from maskrcnn_benchmark.data.datasets.base import PackedStrings

    fields = vars(ds.records)
    assert isinstance(fields["names"], PackedStrings) and fields["extra"] == {}
    arrays = [v for v in fields.values() if isinstance(v, np.ndarray)] + [fields["names"].buffer, fields["names"].offsets]
    assert len(arrays) == len(fields) - 2 + 2 and all(a.dtype != object for a in arrays)
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned loader worker receives
    assert np.array_equal(clone.get_groundtruth(0).bbox, ds.get_groundtruth(0).bbox)
    assert ds.coco.imgs[7]["file_name"] == "im7.png"  # lazily built on first use
    gc.disable()
    try:
        with pytest.raises(ValueError, match="malformed json"):
            (tmp_path / "bad.json").write_text("{")
            COCODataset(str(tmp_path / "bad.json"), root)
        assert not gc.isenabled()  # a caller's disabled GC stays disabled
    finally:
        gc.enable()
    with pytest.raises(ValueError, match="malformed json"):
        COCODataset(str(tmp_path / "bad.json"), root)
    assert gc.isenabled()


def _valid_coco():
    return {"images": [{"id": i, "file_name": f"im{i}.png", "height": 30, "width": 40} for i in (7, 8, 9)],
            "annotations": [{"id": k, "image_id": 7 + k % 2, "category_id": (90, 1, 5)[k % 3],
                             "bbox": [1.5, 2, 10, 5], "iscrowd": int(k == 3)} for k in range(1, 8)],
            "categories": [dict(c) for c in CATS]}


def _mutations():
    """(name, mutate(data)): entries the per-entry checks store in another form or refuse, or that
    the vectorised check leaves to them (a str image id, an id beyond 64 bits)."""
    def setter(section, n, key, value):
        def mutate(d):
            d[section][n][key] = value
        return mutate

    def deleter(section, n, key):
        def mutate(d):
            del d[section][n][key]
        return mutate

    return [
        ("float height", setter("images", 1, "height", 30.0)),
        ("bool width", setter("images", 0, "width", True)),
        ("zero width", setter("images", 0, "width", 0)),
        ("str image id", setter("images", 2, "id", "9")),
        ("duplicate image id", setter("images", 2, "id", 8)),
        ("duplicate category id", setter("categories", 2, "id", 1)),
        ("no file_name", deleter("images", 1, "file_name")),
        ("bool iscrowd", setter("annotations", 0, "iscrowd", False)),
        ("float iscrowd", setter("annotations", 0, "iscrowd", 1.0)),
        ("iscrowd 2", setter("annotations", 0, "iscrowd", 2)),
        ("no iscrowd", deleter("annotations", 4, "iscrowd")),
        ("duplicate annotation id", setter("annotations", 4, "id", 1)),
        ("undeclared category", setter("annotations", 2, "category_id", 2)),
        ("undeclared image", setter("annotations", 2, "image_id", 10)),
        ("bbox of 3", setter("annotations", 6, "bbox", [1, 2, 3])),
        ("bbox not a list", setter("annotations", 6, "bbox", "1234")),
        ("64-bit overflow id", setter("annotations", 6, "id", 2 ** 70)),
        ("no category name", deleter("categories", 0, "name")),
    ]


def test_fast_entry_check_agrees_with_the_per_entry_checks():
    """The vectorised check gives columns for a valid file (labels the ranks of the category ids),
    and then the per-entry checks change nothing; for every entry they would store differently or
    refuse, it gives None (the per-entry checks run)."""
    import copy

    from maskrcnn_benchmark.data.datasets.coco import _canonical_columns, _check_entries

    data = _valid_coco()
    columns = _canonical_columns(data)
    assert columns is not None
    assert columns.ann_labels.tolist() == [1, 2, 3, 1, 2, 3, 1]  # ids 1, 5, 90, ...: ranks among 1 < 5 < 90
    assert columns.bbox.shape == (7, 4) and columns.crowd.tolist() == [0, 0, 1, 0, 0, 0, 0]
    assert columns.ann_rows.tolist() == [1, 0, 1, 0, 1, 0, 1]  # images 8, 7, 8, ... are rows 1, 0, 1, ...
    checked = copy.deepcopy(data)
    _check_entries(checked, "ann.json")
    assert checked == data and json.dumps(checked) == json.dumps(data)  # same values and types
    empty = _valid_coco()
    empty["annotations"] = []
    assert _canonical_columns(empty) is not None
    for name, mutate in _mutations():
        bad = _valid_coco()
        mutate(bad)
        assert _canonical_columns(bad) is None, name  # left to the per-entry checks


def test_packed_strings_subset_gathers_the_same_strings():
    """PackedStrings.subset (a byte gather) equals the strings picked one by one: any order,
    repeats, empty and non-ASCII strings, an empty selection."""
    from maskrcnn_benchmark.data.datasets.base import PackedStrings

    names = ["a.jpg", "", "caf\u00e9/\u732b.png", "dir/0001.jpg", "x"]
    packed = PackedStrings(names)
    for rows in ([4, 0, 2, 2, 1], [], [3], list(range(5))[::-1]):
        sub = packed.subset(np.array(rows, dtype=np.int64))
        assert sub.tolist() == [names[r] for r in rows]
        assert len(sub) == len(rows) and sub.buffer.dtype == np.uint8
