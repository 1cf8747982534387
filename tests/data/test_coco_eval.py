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


def _pycocotools_per_class(dataset, preds):
    """Per-class AP / AP50 / AR100 straight from pycocotools' accumulated arrays (the reference)."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from maskrcnn_benchmark.data.datasets.evaluation.coco_eval import prepare_for_coco_detection

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(dataset.coco, dataset.coco.loadRes(prepare_for_coco_detection(dataset, preds)), "bbox")
        ev.params.imgIds = sorted(dataset.ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec, rec = ev.eval["precision"], ev.eval["recall"]
    out = {}
    for k, cat in enumerate(ev.params.catIds):
        p = prec[:, :, k, 0, 2]
        out[dataset.coco.cats[cat]["name"]] = {"AP": p[p > -1].mean(), "AP50": prec[0, :, k, 0, 2].mean(),
                                               "AR100": rec[:, k, 0, 2].mean()}
    return out, ev.stats


def _mixed_preds():
    # class a: one hit at IoU 0.538 plus a false positive; class b: one exact hit, one miss at IoU 0.6 with
    # a higher-scoring duplicate, and a low-scoring exact hit
    return {0: _pred([[22, 10, 62, 50], [60, 60, 90, 79], [55, 20, 95, 70], [58, 25, 95, 70]], [1, 1, 2, 2],
                     [0.9, 0.95, 0.6, 0.8]),
            1: _pred([[0, 0, 50, 40], [10, 5, 60, 45]], [2, 2], [0.3, 0.7])}


def test_per_class_metrics_equal_pycocotools_arrays(dataset, tmp_path, monkeypatch):
    from maskrcnn_benchmark.data.datasets.evaluation import coco_eval

    monkeypatch.setattr(coco_eval, "coco_backend", lambda prefer_faster=True: "pycocotools")
    preds = _mixed_preds()
    res = evaluate(dataset, preds, None)
    ref, stats = _pycocotools_per_class(dataset, preds)
    assert set(res.per_class) == {"a", "b"}
    for name, row in ref.items():
        for k, v in row.items():
            assert res.per_class[name][k] == pytest.approx(float(v), abs=1e-12), (name, k)
    assert res["AP"] == pytest.approx(float(stats[0]))
    # hand-computed for the shifted-box case: class a found only at IoU 0.50 (AP 0.1, AP50 1, AR100 0.1)
    res = evaluate(dataset, {0: _pred([[22, 10, 62, 50], [55, 20, 95, 70]], [1, 2]), 1: _pred([[0, 0, 50, 40]], [2])},
                   None)
    assert res.per_class["a"] == pytest.approx({"AP": 0.1, "AP50": 1.0, "AR100": 0.1})
    assert res.per_class["b"] == pytest.approx({"AP": 1.0, "AP50": 1.0, "AR100": 1.0})
    assert res.info["backend"] == "pycocotools"


def test_faster_coco_eval_gives_the_same_numbers(dataset, monkeypatch):
    pytest.importorskip("faster_coco_eval")
    from maskrcnn_benchmark.data.datasets.evaluation import coco_eval

    preds = _mixed_preds()
    assert coco_eval.coco_backend() == "faster_coco_eval"
    fast = evaluate(dataset, preds, None)
    assert fast.info["backend"] == "faster_coco_eval"
    monkeypatch.setattr(coco_eval, "coco_backend", lambda prefer_faster=True: "pycocotools")
    slow = evaluate(dataset, preds, None)
    assert dict(fast) == pytest.approx(dict(slow), abs=1e-9)
    for name in slow.per_class:
        assert fast.per_class[name] == pytest.approx(slow.per_class[name], abs=1e-9)


def test_pr_curves_png_and_missing_matplotlib(dataset, tmp_path, monkeypatch, caplog):
    import builtins
    import logging

    pytest.importorskip("matplotlib")
    res = evaluate(dataset, _mixed_preds(), str(tmp_path / "out"))
    png = tmp_path / "out" / "pr_curves.png"
    assert res.info["pr_curves"] == str(png)
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 100 and img.std() > 0

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with caplog.at_level(logging.INFO):
        res = evaluate(dataset, _mixed_preds(), str(tmp_path / "out2"))
    assert res.info["pr_curves"] is None and not (tmp_path / "out2" / "pr_curves.png").exists()
    assert "matplotlib is not installed" in caplog.text and "pip install matplotlib" in caplog.text
    assert res["AP50"] > 0  # the metrics do not depend on it


def test_per_class_table_format():
    from maskrcnn_benchmark.data.datasets.evaluation import format_table

    text = format_table({"cat": {"AP": 0.5, "AP50": 0.75}, "dog": {"AP": -1.0, "AP50": 0.25}}, ("AP", "AP50"))
    lines = text.splitlines()
    assert lines[0].split() == ["class", "AP", "AP50"]
    assert lines[1].split() == ["cat", "0.5000", "0.7500"]
    assert lines[2].split() == ["dog", "-", "0.2500"]
    assert lines[3].split() == ["mean", "0.5000", "0.5000"]  # the undefined AP is left out of the mean


def _pycocotools_stats(ann_file, results):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate(); ev.accumulate(); ev.summarize()
    return [float(v) for v in ev.stats[:6]]


def test_bbox_json_at_full_precision_gives_pycocotools_numbers(tmp_path):
    """bbox.json holds what the model produced: a crafted case where rounding scores to 5 decimals and
    boxes to 3 (the former output) changes COCO statistics -- a false positive listed before a true one
    with a score 4e-6 lower (rounding ties them and the false one goes first), and a false positive of
    32.0004 x 32.0004 px (area > 32^2: not "small"; rounded, it counts against APs)."""
    images = [{"id": 1, "file_name": "a.png", "height": 200, "width": 200}]
    anns = [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [150, 150, 20, 20], "area": 400, "iscrowd": 0}]
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((200, 200, 3), np.uint8))
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 5, "name": "a"}]}))
    ds = COCODataset(str(ann), str(tmp_path), remove_images_without_annotations=False)
    boxes = [[100, 100, 140, 140], [10, 10, 50, 50], [150, 150, 170, 170], [60, 150, 60 + 32.0004, 150 + 32.0004]]
    scores = [0.8000012, 0.8000049, 0.2, 0.3]
    pred = _pred(boxes, [1, 1, 1, 1], scores, size=(200, 200))
    res = evaluate(ds, {0: pred}, str(tmp_path / "out"))
    written = json.loads((tmp_path / "out" / "bbox.json").read_text())

    xywh, sc = pred.xywh().double().tolist(), pred.get_field("scores").double().tolist()
    exact = [{"image_id": 1, "category_id": 5, "bbox": b, "score": s} for b, s in zip(xywh, sc)]
    assert [r["bbox"] for r in written] == xywh and [r["score"] for r in written] == sc  # nothing rounded
    expected = _pycocotools_stats(ann, exact)
    # equal up to the backend's float summation order (faster-coco-eval, when installed, gives 1.0
    # where pycocotools gives 0.9999999999999998); rounding moves them by 5e-3 (below)
    assert [res[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == pytest.approx(expected, abs=1e-12)
    rounded = [{**r, "bbox": [round(v, 3) for v in r["bbox"]], "score": round(r["score"], 5)} for r in exact]
    worse = _pycocotools_stats(ann, rounded)
    assert worse[0] != expected[0] and worse[3] != expected[3]  # AP and APs: the case is a real one


def _synthetic_coco(tmp_path, seed=0, num_images=40, num_classes=5):
    """Random COCO json: varied image sizes, 0-6 boxes per image (some crowd, some small / large),
    json category ids 2, 4, ... ; a few images without annotations."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(num_images):
        w, h = int(rng.integers(60, 400)), int(rng.integers(60, 400))
        images.append({"id": 100 + 3 * i, "file_name": f"{i}.png", "height": h, "width": w})
        for _ in range(int(rng.integers(0, 7)) if i % 7 else 0):
            bw, bh = float(rng.uniform(2, w / 1.5)), float(rng.uniform(2, h / 1.5))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            anns.append({"id": len(anns) + 1, "image_id": 100 + 3 * i, "category_id": 2 * int(rng.integers(1, num_classes + 1)),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": int(rng.random() < 0.1)})
    cats = [{"id": 2 * k, "name": f"c{k}"} for k in range(1, num_classes + 1)]
    ann = tmp_path / "synthetic.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return COCODataset(str(ann), str(tmp_path), remove_images_without_annotations=False, check_image_files=False), rng


def _noisy_predictions(dataset, rng, grid=8.0):
    """Per image: jittered copies of its GT boxes plus random boxes, on a 1/``grid`` pixel grid and with
    scores on a 1/32 grid (so the old path's rounding to 3 / 5 decimals is exact)."""
    preds = {}
    for idx in range(len(dataset)):
        info = dataset.get_img_info(idx)
        gt = dataset.get_groundtruth(idx)
        n_rand = int(rng.integers(0, 8))
        rand_xy = rng.uniform(0, [info["width"], info["height"]], size=(n_rand, 2))
        rand = np.concatenate([rand_xy, rand_xy + rng.uniform(1, 80, size=(n_rand, 2))], 1)
        boxes = np.concatenate([gt.bbox.numpy() + rng.normal(0, 3, size=(len(gt), 4)), rand])
        boxes = np.round(boxes * grid) / grid
        labels = np.concatenate([gt.get_field("labels").numpy(), rng.integers(1, dataset.num_classes + 1, n_rand)])
        scores = np.round(rng.uniform(0.05, 1, len(boxes)) * 32) / 32
        preds[idx] = _pred(boxes.tolist(), labels.tolist(), scores.tolist(), size=(info["width"], info["height"]))
    return preds


def _old_path_stats(dataset, preds, backend="pycocotools"):
    """The 12 statistics of the previous implementation: one dict per box (rounded bbox / score), loadRes
    and COCOeval on the dataset's pycocotools COCO (faster-coco-eval: on a deep copy of its json)."""
    import contextlib
    import copy
    import io

    from pycocotools.cocoeval import COCOeval

    results = []
    for idx, pred in sorted(preds.items()):
        xywh = pred.xywh().double().numpy()
        for box, s, lab in zip(xywh, pred.get_field("scores").double().numpy(), pred.get_field("labels").tolist()):
            results.append({"image_id": dataset.ids[idx], "category_id": dataset.contiguous_category_id_to_json_id[lab],
                            "bbox": [round(float(v), 3) for v in box], "score": round(float(s), 5)})
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCO as FasterCOCO, COCOeval_faster

            gt = FasterCOCO(dataset.coco.dataset, use_deepcopy=True)
            ev = COCOeval_faster(gt, gt.loadRes(copy.deepcopy(results)), "bbox", print_function=print)
        else:
            ev = COCOeval(dataset.coco, dataset.coco.loadRes(copy.deepcopy(results)), "bbox")
        ev.params.imgIds = sorted(dataset.ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats), results


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_column_results_give_the_old_paths_12_statistics(tmp_path, monkeypatch, backend):
    from maskrcnn_benchmark.data.datasets.evaluation import coco_eval

    if backend == "faster_coco_eval":
        pytest.importorskip("faster_coco_eval")
    monkeypatch.setattr(coco_eval, "coco_backend", lambda prefer_faster=True: backend)
    dataset, rng = _synthetic_coco(tmp_path)
    preds = _noisy_predictions(dataset, rng)
    ref_stats, ref_results = _old_path_stats(dataset, preds, backend)
    if backend == "faster_coco_eval":  # the backends agree to rounding
        assert np.allclose(ref_stats, _old_path_stats(dataset, preds)[0], rtol=0, atol=1e-12)
    captured = {}
    real_run = coco_eval._run_cocoeval

    def spy(gt_json, results, img_ids, name):
        ev, text = real_run(gt_json, results, img_ids, name)
        captured["stats"] = np.asarray(ev.stats)
        return ev, text

    monkeypatch.setattr(coco_eval, "_run_cocoeval", spy)
    res = evaluate(dataset, preds, str(tmp_path / "out"))
    assert res.info["backend"] == backend
    assert np.array_equal(captured["stats"], ref_stats), (captured["stats"], ref_stats)
    assert 0.05 < ref_stats[0] < 0.95 and (ref_stats > -1).sum() >= 9  # a non-trivial set
    written = json.loads((tmp_path / "out" / "bbox.json").read_text())
    assert written == ref_results  # same entries, same order (values exact on this grid)


def test_results_json_is_full_precision(dataset, tmp_path):
    score = float(torch.tensor(0.123456789, dtype=torch.float32))
    box = [10.123456, 10.5, 50.987654, 50.25]
    evaluate(dataset, {0: _pred([box], [1], [score]), 1: _pred([], [])}, str(tmp_path / "o"))
    (entry,) = json.loads((tmp_path / "o" / "bbox.json").read_text())
    b32 = torch.tensor(box, dtype=torch.float32)
    assert entry["score"] == score  # the float32 value exactly, not rounded to 5 decimals
    assert entry["bbox"] == [float(b32[0]), float(b32[1]), float(b32[2] - b32[0]), float(b32[3] - b32[1])]
    assert entry["image_id"] == 11 and entry["category_id"] == 3


def test_pr_curves_only_on_request(dataset, tmp_path):
    res = evaluate(dataset, _mixed_preds(), str(tmp_path / "out"), pr_curves=False)
    assert "pr_curves" not in res.info and not (tmp_path / "out" / "pr_curves.png").exists()
    assert (tmp_path / "out" / "bbox.json").exists()
