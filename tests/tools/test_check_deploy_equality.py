"""tools/check_deploy_equality.py: the permutation-tolerant comparison, and the whole check on a
tiny untrained GroupNorm model with forced detections on images of mixed sizes."""
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = "configs/atss/atss_R_18_FPN_small.yaml"


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool("check_deploy_equality")


def _dets(rows):
    """{image_id: (boxes, scores, labels)} from (image_id, x1, y1, x2, y2, score, label) rows."""
    a = np.asarray(rows, dtype=np.float64)
    return {int(i): (a[a[:, 0] == i, 1:5], a[a[:, 0] == i, 5], a[a[:, 0] == i, 6].astype(np.int64))
            for i in np.unique(a[:, 0])}


REF = [(1, 0, 0, 10, 10, 0.5, 1), (1, 5, 5, 20, 20, 0.5, 1), (1, 1, 2, 3, 4, 0.3, 2),
       (2, 7, 7, 9, 9, 0.9, 1)]


def test_compare_pairs_equal_scores_in_any_order():
    # the two score-0.5 boxes of label 1 swapped, a score 4e-6 off (within rounding)
    got = [REF[1], REF[0], REF[2][:5] + (0.3 + 4e-6, 2), REF[3]]
    cmp = tool.compare_detections(_dets(REF), _dets(got))
    assert cmp.max_box == 0.0 and cmp.max_score == pytest.approx(4e-6)
    assert cmp.ok(1e-3, 1e-5)


def test_compare_finds_moved_boxes_changed_labels_and_counts():
    moved = [REF[0], (1, 5, 5, 20.002, 20, 0.5, 1), REF[2], REF[3]]
    cmp = tool.compare_detections(_dets(REF), _dets(moved))
    assert cmp.max_box == pytest.approx(0.002) and not cmp.ok(1e-3, 1e-5)
    relabelled = [REF[0][:6] + (3,)] + REF[1:]  # a score-0.5 detection, above the image's lowest
    cmp = tool.compare_detections(_dets(REF), _dets(relabelled))
    assert sorted(cmp.unmatched) == [(1, 1, 0.5), (1, 3, 0.5)] and not cmp.ok(1e-3, 1e-5)
    cmp = tool.compare_detections(_dets(REF), _dets(REF[:3]))  # image 2 lost its detection
    assert cmp.unmatched == [(2, 1, 0.9)] and cmp.cut_swaps == 0
    rescored = REF[:3] + [REF[3][:5] + (0.8, 1)]
    cmp = tool.compare_detections(_dets(REF), _dets(rescored))
    assert cmp.max_score == pytest.approx(0.1) and not cmp.ok(1e-3, 1e-5)


def test_compare_accepts_a_swap_tied_at_the_cut_only():
    """Image 1 at its detection cap: its last detection (label 2, 0.3) and another candidate
    (label 1, 0.3 + 9e-8, elsewhere) tie to float rounding; each path keeps one of them."""
    swapped = REF[:2] + [(1, 40, 40, 60, 60, 0.3 + 9e-8, 1), REF[3]]
    cmp = tool.compare_detections(_dets(REF), _dets(swapped))
    assert cmp.cut_swaps == 2 and not cmp.unmatched and cmp.ok(1e-3, 1e-5)
    far = REF[:2] + [(1, 40, 40, 60, 60, 0.3 + 1e-3, 1), REF[3]]  # not a rounding tie
    assert len(tool.compare_detections(_dets(REF), _dets(far)).unmatched) == 2
    # one more detection just above the score threshold 0.05: a cut swap at the threshold
    extra = REF + [(2, 1, 1, 5, 5, 0.05 + 2e-6, 4)]
    assert tool.compare_detections(_dets(REF), _dets(extra), threshold=0.05).cut_swaps == 1
    assert tool.compare_detections(_dets(REF), _dets(extra)).unmatched == [(2, 4, pytest.approx(0.05 + 2e-6))]


@pytest.fixture(scope="module")
def mixed_coco(tmp_path_factory):
    """Four images of three shapes (two orientations): every batch of 2 or 4 pads some image."""
    root = str(tmp_path_factory.mktemp("mixed"))
    os.makedirs(os.path.join(root, "img"))
    g = np.random.default_rng(3)
    imgs, anns = [], []
    for i, (h, w) in enumerate([(48, 64), (64, 48), (40, 72), (64, 48)]):
        img = g.integers(0, 255, (h, w, 3), dtype=np.uint8)
        cv2.rectangle(img, (5 + i, 8), (30, 36), (0, 200, 255), -1)
        cv2.imwrite(os.path.join(root, "img", f"{i}.png"), img)
        imgs.append({"id": 10 + i, "file_name": f"{i}.png", "height": h, "width": w})
        anns.append({"id": i + 1, "image_id": 10 + i, "category_id": 1 + i % 2,
                     "bbox": [5 + i, 8, 25 - i, 28], "area": 500.0, "iscrowd": 0})
    with open(os.path.join(root, "ann.json"), "w") as f:
        json.dump({"images": imgs, "annotations": anns,
                   "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}, f)
    return f"{root}/ann.json:{root}/img"


def _opts(dataset):
    return ["DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)",
            "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
            "MODEL.BACKBONE.USE_GN", "True", "MODEL.ATSS.INFERENCE_TH", "0.0",
            "MODEL.ATSS.NUM_CLASSES", "3", "MODEL.ATSS.NUM_CONVS", "1", "MODEL.ATSS.PRE_NMS_TOP_N", "50",
            "TEST.DETECTIONS_PER_IMG", "20", "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "32",
            "MODEL.GROUP_NORM.NUM_GROUPS", "8"]


@pytest.fixture(scope="module")
def gn_weights(tmp_path_factory, mixed_coco):
    """An untrained GroupNorm model (GN backbone and towers, GN shifts non-zero so the padding
    is not zero after them) whose classification bias is N(0, 1): varied scores."""
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer
    from maskrcnn_benchmark.config import setup_cfg

    tmp = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    model = build_detection_model(setup_cfg(SMALL, _opts(mixed_coco)))
    with torch.no_grad():
        model.rpn.head.cls_logits.bias.normal_()
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.bias.normal_()
    return Checkpointer(model, save_dir=str(tmp), save_to_disk=True).save("m")


def _table(text):
    """{path: (AP, detections, max box diff, max score diff, cut swaps, check)} of the table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[1][:1].isdigit():
            rows[cells[0]] = (float(cells[1]), int(cells[2]), float(cells[3]), float(cells[4]),
                              int(cells[5]), cells[6])
    return rows


def test_every_path_gives_the_batch_1_detections(tmp_path, mixed_coco, gn_weights, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxconverter_common")
    argv = ["--config-file", SMALL, "--work-dir", str(tmp_path), "--batches", "1,2,4", "--skip-aoti",
            *_opts(mixed_coco), "MODEL.WEIGHT", gn_weights]
    assert tool.main(argv) == 0
    rows = _table(capsys.readouterr().out)
    assert set(rows) == {"test_net_b1", "test_net_b2", "test_net_b4", "predictor", "onnx_dyn_nms",
                         "onnx_dyn_none", "onnx_fixed_nms", "onnx_fixed_none", "onnx_fp16"}
    for path, (ap, n, box, score, _, check) in rows.items():
        assert check.startswith("ok"), path
        if path != "onnx_fp16":
            assert box <= 1e-3 and score <= 1e-5 and ap == rows["test_net_b1"][0], path
            assert n == rows["test_net_b1"][1] > 4 * 10, path  # threshold 0: many detections
    # the releases' behaviour (GroupNorm over the padding) is caught: batch 4 moves the boxes
    assert tool.main(argv[:4] + ["--paths", "test_net", "--batches", "1,4", *argv[7:],
                                 "TEST.BATCH_INVARIANT", "False"]) == 1
    rows = _table(capsys.readouterr().out)
    assert rows["test_net_b4"][5].startswith("FAIL")
    assert rows["test_net_b4"][2] > 1e-3 or "without a partner" in rows["test_net_b4"][5]


def test_refuses_missing_weights_and_unknown_paths(tmp_path, mixed_coco):
    base = ["--config-file", SMALL, "--work-dir", str(tmp_path), *_opts(mixed_coco)]
    with pytest.raises(SystemExit) as e:
        tool.main(base)
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        tool.main(base[:4] + ["--paths", "test_net,tensorrt"] + base[4:] + ["MODEL.WEIGHT", "x.pth"])
    assert e.value.code == 2
