import json
import os
import threading

import numpy as np
import pytest
from pycocotools.coco import COCO

from maskrcnn_benchmark.config.paths_catalog import DatasetCatalog
from maskrcnn_benchmark.data import synthetic
from maskrcnn_benchmark.data.build import dataset_record
from maskrcnn_benchmark.data.datasets import COCODataset

SMALL = dict(image_size=64, min_object_size=8)


def _files(folder):
    out = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


def test_same_seed_gives_identical_bytes(tmp_path):
    synthetic.generate_synthetic_coco(tmp_path / "a", 5, 2, seed=3, **SMALL)
    synthetic.generate_synthetic_coco(tmp_path / "b", 5, 2, seed=3, **SMALL)
    synthetic.generate_synthetic_coco(tmp_path / "c", 5, 2, seed=4, **SMALL)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 5 + 2 + 2 and a == b
    assert a != c
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]  # no temp folders left


def test_json_valid_boxes_inside_all_categories(tmp_path):
    paths = synthetic.generate_synthetic_coco(tmp_path / "d", 24, 3, seed=0, **SMALL)
    coco = COCO(paths["train"]["ann_file"])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(synthetic.CATEGORIES)
    anns = coco.dataset["annotations"]
    assert {a["category_id"] for a in anns} == set(range(1, 7))
    assert len({a["id"] for a in anns}) == len(anns)
    for a in anns:
        im = coco.imgs[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= im["width"] + 1e-6 and y + h <= im["height"] + 1e-6
        assert w > 0 and h > 0 and a["iscrowd"] == 0 and a["area"] == pytest.approx(w * h, abs=0.01)
    for im in coco.dataset["images"]:
        assert 48 <= im["width"] <= 64 and 48 <= im["height"] <= 64
    ds = COCODataset(paths["val"]["ann_file"], paths["val"]["root"], remove_images_without_annotations=False)
    image, target, _ = ds[0]
    assert image.shape == (ds.get_img_info(0)["height"], ds.get_img_info(0)["width"], 3)
    assert 1 <= len(target) <= 6


def test_objects_visible_against_background():
    rng = np.random.default_rng(0)
    image, objects = synthetic.render_image(rng, synthetic.SyntheticConfig(max_objects=1, min_object_size=30,
                                                                           noise_std=0.0))
    (cat, (x, y, w, h)), = objects
    cx, cy = int(x + w / 2), int(y + h * 0.7)  # inside every shape but the ring's hole
    if synthetic.CATEGORIES[cat] == "ring":
        cx = int(x + w * 0.1 + 1)
    corner = image[0, 0].astype(float) if x > 2 and y > 2 else image[-1, -1].astype(float)
    assert np.abs(image[cy, cx].astype(float) - corner).mean() > 20


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.render_image

    def flaky(rng, cfg):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk full (simulated)")
        return real(rng, cfg)

    monkeypatch.setattr(synthetic, "render_image", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        synthetic.generate_synthetic_coco(tmp_path / "out", 3, 2, seed=0, **SMALL)
    assert os.listdir(tmp_path) == []  # neither the folder, nor its json, nor temp leftovers


def test_existing_folder_needs_overwrite(tmp_path):
    synthetic.generate_synthetic_coco(tmp_path / "o", 1, 1, seed=0, **SMALL)
    with pytest.raises(FileExistsError, match="overwrite"):
        synthetic.generate_synthetic_coco(tmp_path / "o", 1, 1, seed=0, **SMALL)
    synthetic.generate_synthetic_coco(tmp_path / "o", 2, 1, seed=0, overwrite=True, **SMALL)
    assert len(os.listdir(tmp_path / "o" / "train")) == 2
    assert sorted(os.listdir(tmp_path)) == ["o"]


def test_catalog_names_the_paths_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKRCNN_BENCHMARK_DATA_DIR", str(tmp_path))
    got = DatasetCatalog.get("synthetic_coco_val")
    out_dir = str(tmp_path / "synthetic_coco")
    assert got["factory"] == "COCODataset"
    assert got["args"] == synthetic.split_paths(out_dir, "val")  # the generator's layout
    assert got["generate"] == {"kind": "synthetic_coco", "args": dict(out_dir=out_dir, **DatasetCatalog.SYNTHETIC_ARGS)}
    assert os.listdir(tmp_path) == []


def test_unknown_generator_is_refused_naming_the_dataset():
    class Catalog:
        @staticmethod
        def get(name):
            return {"factory": "COCODataset", "args": {}, "generate": {"kind": "nope", "args": {}}}

    with pytest.raises(ValueError, match=r"dataset 'x': .*'nope', which is not one of \['synthetic_coco'\]"):
        dataset_record("x", Catalog)


def test_first_use_generates_once_across_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKRCNN_BENCHMARK_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(DatasetCatalog, "SYNTHETIC_ARGS", dict(num_train=3, num_val=2, seed=0, **SMALL))
    calls = []
    real = synthetic.generate_synthetic_coco
    monkeypatch.setattr(synthetic, "generate_synthetic_coco", lambda *a, **k: calls.append(1) or real(*a, **k))
    results = []
    threads = [threading.Thread(target=lambda: results.append(dataset_record("synthetic_coco_train", DatasetCatalog)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 3
    args = results[0]["args"]
    assert args["root"] == str(tmp_path / "synthetic_coco" / "train")
    assert len(json.load(open(args["ann_file"]))["images"]) == 3
    val = dataset_record("synthetic_coco_val", DatasetCatalog)["args"]
    assert len(COCODataset(val["ann_file"], val["root"], False)) == 2
    assert len(calls) == 1


def test_cli(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_synthetic_coco", os.path.join(os.path.dirname(__file__), "..", "..", "tools", "make_synthetic_coco.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--out", str(tmp_path / "cli"), "--num-train", "2", "--num-val", "1", "--image-size", "48",
                     "--seed", "7", "--format", "png"]) == 0
    assert sorted(os.listdir(tmp_path / "cli" / "train")) == ["train_000001.png", "train_000002.png"]
    assert "instances_train.json" in capsys.readouterr().out
