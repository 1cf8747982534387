"""train() set-up of the workflow options: linear lr scaling applied and logged, class names saved in
checkpoints (the Predictor reads them)."""
import logging
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_CONFIG = os.path.join(ROOT, "configs", "atss", "atss_R_18_FPN_small.yaml")


def _make_tiny_coco(root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("test_trainer_mod", os.path.join(ROOT, "tests", "engine",
                                                                                    "test_trainer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_coco(root)


def test_train_scales_lr_and_saves_class_names(tmp_path, caplog):
    from maskrcnn_benchmark.engine.predictor import Predictor
    from maskrcnn_benchmark.engine.trainer import train
    from maskrcnn_benchmark.utils.miscellaneous import setup_cfg

    dataset = _make_tiny_coco(str(tmp_path / "data"))
    out = tmp_path / "out"
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", f"('{dataset}',)", "OUTPUT_DIR", str(out),
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_BATCH", "8",
            "SOLVER.BASE_LR", "0.04", "SOLVER.WARMUP_ITERS", "0", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(10,)",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "96"]
    torch.set_num_threads(1)
    with caplog.at_level(logging.INFO):
        train(setup_cfg(SMALL_CONFIG, opts), skip_test=True)
    assert "BASE_LR 0.04 x 2/8 = 0.01" in caplog.text
    saved = setup_cfg(str(out / "config.yml"))
    assert saved.SOLVER.BASE_LR == pytest.approx(0.01) and saved.SOLVER.REFERENCE_BATCH == 2
    state = torch.load(out / "model_final.pth", weights_only=True)
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    assert groups["rpn.head.cls_logits.weight"]["lr"] == pytest.approx(0.01)  # no warmup, before STEPS
    assert groups["rpn.head.cls_logits.bias"]["lr"] == pytest.approx(0.02)  # BIAS_LR_FACTOR 2
    assert state["class_names"] == ["__background__", "square", "bar"]

    predictor = Predictor(str(out / "config.yml"), str(out / "model_final.pth"), opts=["DATASETS.TRAIN", "()"])
    assert predictor.class_names == ["__background__", "square", "bar"]
