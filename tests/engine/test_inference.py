"""Inference: predictions resized to the original images, gathering, test_net and visualize tools."""
import importlib.util
import json
import os
import re

import numpy as np
import pytest
import torch
from torch import nn

from maskrcnn_benchmark.engine.inference import compute_on_dataset, dataset_folder_name, gather_predictions
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import to_image_list

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_CONFIG = os.path.join(ROOT, "configs", "atss", "atss_R_18_FPN_small.yaml")


class _HalfSizeDataset:
    """Images stored at half their original size (as a test transform would shrink them)."""

    def __init__(self, n):
        self.sizes = [(40 + 10 * i, 30 + 4 * i) for i in range(n)]  # original (w, h)

    def __len__(self):
        return len(self.sizes)

    def get_img_info(self, i):
        w, h = self.sizes[i]
        return {"width": w, "height": h, "id": i + 1}


class _BoxAtImageCorner(nn.Module):
    """One detection covering the whole (unpadded) input image."""

    def forward(self, images):
        out = []
        for h, w in images.image_sizes:
            b = BoxList(torch.tensor([[0.0, 0.0, w, h]]), (w, h))
            b.add_field("scores", torch.tensor([1.0]))
            b.add_field("labels", torch.tensor([1]))
            out.append(b)
        return out


class _Loader:
    def __init__(self, dataset, order):
        self.dataset, self.order = dataset, order

    def __iter__(self):
        for idx in self.order:
            w, h = self.dataset.sizes[idx]
            yield to_image_list([torch.zeros(3, h // 2, w // 2)]), [None], (idx,)


def test_compute_on_dataset_resizes_to_original():
    ds = _HalfSizeDataset(3)
    preds = compute_on_dataset(_BoxAtImageCorner(), _Loader(ds, [2, 0, 1]), torch.device("cpu"))
    assert sorted(preds) == [0, 1, 2]
    for i, p in preds.items():
        w, h = ds.sizes[i]
        assert p.size == (w, h)
        torch.testing.assert_close(p.bbox, torch.tensor([[0.0, 0.0, (w // 2) * w / (w // 2), (h // 2) * h / (h // 2)]]))


def test_gather_predictions_orders_and_dedups():
    a, b = BoxList(torch.zeros(1, 4), (2, 2)), BoxList(torch.ones(1, 4), (2, 2))
    merged = gather_predictions({3: a, 1: b})
    assert list(merged) == [1, 3] and merged[3] is a


def test_dataset_folder_name():
    assert dataset_folder_name("coco_2017_val") == "coco_2017_val"
    assert dataset_folder_name("/data/x/instances val.json:/data/x/img") == "instances_val"


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    import cv2

    root = str(tmp_path_factory.mktemp("coco_inf"))
    os.makedirs(os.path.join(root, "img"))
    images, anns = [], []
    for i in range(3):
        img = np.full((48 + 8 * i, 64, 3), 50, np.uint8)
        cv2.rectangle(img, (10, 8), (40, 36), (0, 200, 255), -1)
        cv2.imwrite(os.path.join(root, "img", f"{i}.jpg"), img)
        images.append({"id": 10 + i, "file_name": f"{i}.jpg", "height": 48 + 8 * i, "width": 64})
        anns.append({"id": i + 1, "image_id": 10 + i, "category_id": 7, "bbox": [10, 8, 30, 28], "area": 840.0,
                     "iscrowd": 0})
    with open(os.path.join(root, "ann.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": [{"id": 7, "name": "box"}]}, f)
    return root


def test_test_net_and_visualize_tools(tmp_path, tiny_coco):
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer
    from maskrcnn_benchmark.config import setup_cfg

    dataset = f"{tiny_coco}/ann.json:{tiny_coco}/img"
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)",
            "OUTPUT_DIR", str(tmp_path / "out"), "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "2",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "MODEL.ATSS.INFERENCE_TH", "0.0"]
    cfg = setup_cfg(SMALL_CONFIG, opts + ["MODEL.ATSS.NUM_CLASSES", "2"])
    torch.manual_seed(0)
    weights = Checkpointer(build_detection_model(cfg), save_dir=str(tmp_path / "w"), save_to_disk=True).save("m")

    results = _load_tool("test_net").main(["--config-file", SMALL_CONFIG, *opts, "MODEL.WEIGHT", weights])
    name = dataset
    assert set(results[name]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    folder = tmp_path / "out" / "inference" / "ann"
    dets = json.loads((folder / "bbox.json").read_text())
    assert {d["image_id"] for d in dets} <= {10, 11, 12} and {d["category_id"] for d in dets} == {7}
    for d in dets:  # boxes in original image coordinates
        assert d["bbox"][0] + d["bbox"][2] <= 64 + 1e-3
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and metrics["bbox"]["AP"] == pytest.approx(results[name]["AP"])

    written = _load_tool("visualize_detections").main(
        ["--config-file", SMALL_CONFIG, "--images", os.path.join(tiny_coco, "img"), "--output-dir",
         str(tmp_path / "vis"), "--score-threshold", "0.0", *opts, "MODEL.WEIGHT", weights])
    assert [os.path.basename(p) for p in written] == ["0.png", "1.png", "2.png"]
    assert os.path.isfile(written[0])


def test_test_net_missing_weight(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        _load_tool("test_net").main(["--config-file", SMALL_CONFIG, "MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CLASSES",
                                     "2", "OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHT", str(tmp_path / "missing.pth")])


def test_build_test_model_refuses_partial_nonfinite_or_other_head_checkpoints(tmp_path):
    """What test_net / export load (build_test_model): a checkpoint without the box-regression tensors,
    one with a NaN weight, and one whose stored config names another head are refused, naming the
    tensors or both heads; the complete checkpoint of the same head loads."""
    from maskrcnn_benchmark.engine.inference import build_test_model
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.config import setup_cfg

    cfg = setup_cfg(SMALL_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CLASSES", "2", "OUTPUT_DIR", str(tmp_path)])
    state = build_detection_model(cfg).state_dict()
    regression = sorted(k for k in state if "bbox_pred" in k)
    assert regression

    def saved(name, model_state, head=cfg.MODEL.HEAD):
        other = cfg.clone()
        other.defrost()
        other.MODEL.HEAD = head
        path = str(tmp_path / f"{name}.pth")
        torch.save({"model": model_state, "config": other.dump(), "iteration": 1}, path)
        return path

    def _with_weight(base, path):
        c = base.clone()
        c.defrost()
        c.MODEL.WEIGHT = path
        c.freeze()
        return c

    partial = {k: v for k, v in state.items() if k not in regression}
    with pytest.raises(ValueError, match=rf"partial\.pth: {len(regression)} of the model's tensors are not in it "
                                         rf"\({re.escape(', '.join(regression))}\)"):
        build_test_model(_with_weight(cfg, saved("partial", partial)))
    nan = dict(state)
    nan[regression[0]] = state[regression[0]].clone().fill_(float("nan"))
    with pytest.raises(ValueError, match=rf"nan\.pth: 1 tensor\(s\) hold NaN or inf \({re.escape(regression[0])}\)"):
        build_test_model(_with_weight(cfg, saved("nan", nan)))
    with pytest.raises(ValueError, match=rf"MODEL\.HEAD: checkpoint FCOS, config {cfg.MODEL.HEAD}"):
        build_test_model(_with_weight(cfg, saved("fcos", state, head="FCOS")))
    _, model = build_test_model(_with_weight(cfg, saved("ok", state)))
    assert torch.equal(model.state_dict()[regression[0]], state[regression[0]])


def _tiny_atss_cfg(weight=""):
    from maskrcnn_benchmark.modeling.dense_heads import set_num_classes
    from maskrcnn_benchmark.config import setup_cfg

    cfg = setup_cfg(SMALL_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.HEAD", "ATSS", "MODEL.ATSS.NUM_CONVS", "1",
                                   "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "32", "MODEL.GROUP_NORM.NUM_GROUPS", "8",
                                   "MODEL.WEIGHT", weight, "OUTPUT_DIR", ""])
    cfg.defrost()
    set_num_classes(cfg, 4)
    cfg.freeze()
    return cfg


def test_build_test_model_picks_the_release_geometry_from_the_checkpoint(tmp_path, caplog):
    """A release checkpoint (rpn.anchor_generator.cell_anchors.* buffers, "module." prefix) run with an
    unchanged config (MODEL.LEGACY_PLUS_ONE auto) gets the release geometry and the checkpoint's anchors;
    the same weights without those buffers (this project's checkpoints) get the continuous one."""
    import logging

    from maskrcnn_benchmark.engine.inference import build_test_model
    from maskrcnn_benchmark.modeling.detector import build_detection_model

    donor = build_detection_model(_tiny_atss_cfg())
    state = {f"module.{k}": v for k, v in donor.state_dict().items()}
    anchors = {f"module.rpn.anchor_generator.cell_anchors.{i}":
               torch.tensor([[s / 2 - (8 * s - 1) / 2] * 2 + [s / 2 + (8 * s - 1) / 2] * 2]) + (0.25 if i == 4 else 0)
               for i, s in enumerate((8, 16, 32, 64, 128))}  # level 4 altered: the checkpoint's value must win
    release, ours = tmp_path / "release.pth", tmp_path / "ours.pth"
    torch.save({"model": {**state, **anchors}}, release)
    torch.save({"model": state}, ours)

    with caplog.at_level(logging.INFO):
        cfg, model = build_test_model(_tiny_atss_cfg(str(release)))
    assert cfg.MODEL.LEGACY_PLUS_ONE is True
    assert "carries the original releases' anchor buffers" in caplog.text
    gen = model.rpn.prior_generator
    assert gen.legacy_plus_one and model.rpn.post_processor.legacy_plus_one
    for i in range(5):
        assert torch.equal(gen.cell_anchors[i], anchors[f"module.rpn.anchor_generator.cell_anchors.{i}"])
    top = gen.grid_anchors([(1, 1)] * 5)
    assert top[4].tolist() == [[64 - 511.5 + 0.25, 64 - 511.5 + 0.25, 64 + 511.5 + 1.25, 64 + 511.5 + 1.25]]
    assert torch.equal(model.rpn.head.cls_logits.weight, donor.rpn.head.cls_logits.weight)

    caplog.clear()
    with caplog.at_level(logging.INFO):
        cfg, model = build_test_model(_tiny_atss_cfg(str(ours)))
    assert cfg.MODEL.LEGACY_PLUS_ONE is False and not model.rpn.prior_generator.legacy_plus_one
    assert "continuous coordinates" in caplog.text
