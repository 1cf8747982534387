"""train() set-up of the workflow options: linear lr scaling applied and logged, class names saved in
checkpoints (the Predictor reads them)."""
import importlib.util
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
    from maskrcnn_benchmark.config import setup_cfg

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


def _opts(dataset, out, **extra):
    opts = {"MODEL.DEVICE": "cpu", "DATASETS.TRAIN": f"('{dataset}',)", "DATASETS.TEST": "()", "OUTPUT_DIR": str(out),
            "DATALOADER.NUM_WORKERS": "0", "SOLVER.IMS_PER_BATCH": "2", "TEST.IMS_PER_BATCH": "2",
            "SOLVER.MAX_ITER": "2", "SOLVER.STEPS": "(10,)", "SOLVER.BASE_LR": "0.01", "SOLVER.WARMUP_ITERS": "2",
            "SOLVER.WARMUP_METHOD": "linear", "SOLVER.WARMUP_FACTOR": "0.5", "SOLVER.LOG_PERIOD": "1",
            "SOLVER.CHECKPOINT_PERIOD": "100", "INPUT.MIN_SIZE_TRAIN": "(64,)", "INPUT.MAX_SIZE_TRAIN": "96",
            "INPUT.MIN_SIZE_TEST": "64", "INPUT.MAX_SIZE_TEST": "96"}
    opts.update(extra)
    return [x for kv in opts.items() for x in kv]


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def fine_tuned_run(tmp_path_factory):
    """MODEL.WEIGHT from a 7-class model into the 2-class tiny dataset, EMA 0.5, 2 iterations, final
    evaluation; returns (OUTPUT_DIR, log messages, dataset name)."""
    from maskrcnn_benchmark.engine.trainer import train
    from maskrcnn_benchmark.modeling.detector import build_detection_model
    from maskrcnn_benchmark.config import setup_cfg

    tmp_path = tmp_path_factory.mktemp("fine_tune")
    dataset = _make_tiny_coco(str(tmp_path / "data"))
    torch.manual_seed(0)
    seven = build_detection_model(setup_cfg(SMALL_CONFIG, ["MODEL.ATSS.NUM_CLASSES", "8"]))
    weight = str(tmp_path / "seven.pth")
    torch.save({"model": seven.state_dict()}, weight)
    out = tmp_path / "out"
    torch.set_num_threads(1)
    cfg = setup_cfg(SMALL_CONFIG, _opts(dataset, out, **{"MODEL.WEIGHT": weight, "SOLVER.EMA_DECAY": "0.5",
                                                         "DATASETS.TEST": f"('{dataset}',)"}))
    handler = _Messages()
    root = logging.getLogger("maskrcnn_benchmark")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        train(cfg)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    return out, handler.messages, dataset


def test_fine_tune_from_other_classes_with_ema_and_metrics(fine_tuned_run):
    """The predictors of the 7-class checkpoint are skipped (logged); metrics.jsonl holds the training
    and the final evaluation lines; the checkpoint's EMA weights are what the Predictor loads."""
    from maskrcnn_benchmark.engine.predictor import Predictor
    from maskrcnn_benchmark.utils.metrics_io import read_metrics

    out, messages, dataset = fine_tuned_run
    skipped = [m for m in messages if "another number of classes" in m]
    assert len(skipped) == 1 and "rpn.head.cls_logits.weight" in skipped[0] and "rpn.head.cls_logits.bias" in skipped[0]
    assert "(checkpoint (7, 128, 3, 3))" in skipped[0]

    records = read_metrics(str(out))
    train_lines = [r for r in records if "dataset" not in r]
    assert [r["iteration"] for r in train_lines] == [1, 2]
    assert [r["lr"] for r in train_lines] == pytest.approx([0.005, 0.0075])  # linear warmup from 0.5
    for r in train_lines:
        terms = [k for k in r if k.startswith("loss_")]
        assert len(terms) >= 2 and r["loss"] == pytest.approx(sum(r[k] for k in terms), rel=1e-5)
        assert r["time"] > 0 and r["data_time"] >= 0
    evals = [r for r in records if "dataset" in r]
    assert len(evals) == 1 and evals[0]["iteration"] == 2 and evals[0]["dataset"] == dataset
    assert {"bbox/AP", "bbox/AP50"} <= set(evals[0])
    assert any("Evaluating at iteration 2 (EMA weights)" in m for m in messages)

    state = torch.load(out / "model_final.pth", weights_only=True)
    assert state["ema"]["updates"] == 2 and isinstance(state["config"], str)
    # unfolded, so that its state dict has the checkpoint's keys
    predictor = Predictor(str(out / "config.yml"), str(out / "model_final.pth"),
                          opts=["DATASETS.TRAIN", "()", "TEST.FOLD_FROZEN_BN", False])
    loaded = predictor.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state["ema"]["model"].items())
    assert any(not torch.equal(state["ema"]["model"][k], v) for k, v in state["model"].items())


def test_plot_curves_draws_the_run(fine_tuned_run, tmp_path):
    import cv2

    spec = importlib.util.spec_from_file_location("tools_plot_curves", os.path.join(ROOT, "tools", "plot_curves.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = fine_tuned_run[0]
    assert list(tool.collect_curves([str(out)])) == ["loss", "loss_centerness", "loss_cls", "loss_reg", "lr", "bbox/AP"]
    pytest.importorskip("matplotlib")
    png = str(tmp_path / "curves.png")
    assert tool.main([str(out), "--output", png]) == png
    image = cv2.imread(png)
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 600


def test_resume_with_changed_steps_and_lr_follows_the_new_schedule(tmp_path, caplog):
    """Train 2 iterations, then rerun with MAX_ITER 5, STEPS (3,), BASE_LR 0.02: the resumed updates use
    the new schedule (hand computation below) and the log lists the three changed keys."""
    from maskrcnn_benchmark.engine.trainer import train
    from maskrcnn_benchmark.utils.metrics_io import read_metrics
    from maskrcnn_benchmark.config import setup_cfg

    dataset = _make_tiny_coco(str(tmp_path / "data"))
    out = tmp_path / "out"
    torch.set_num_threads(1)
    train(setup_cfg(SMALL_CONFIG, _opts(dataset, out)), skip_test=True)
    changed = {"SOLVER.MAX_ITER": "5", "SOLVER.STEPS": "(3,)", "SOLVER.BASE_LR": "0.02"}
    with caplog.at_level(logging.INFO):
        train(setup_cfg(SMALL_CONFIG, _opts(dataset, out, **changed)), skip_test=True)
    notes = [r.getMessage() for r in caplog.records if "differs from that of the checkpoint" in r.getMessage()]
    assert len(notes) == 1 and "in 3 key(s)" in notes[0]
    for line in ("SOLVER.BASE_LR: 0.01 -> 0.02", "SOLVER.MAX_ITER: 2 -> 5", "SOLVER.STEPS: (10,) -> (3,)"):
        assert line in notes[0]

    lrs = [r["lr"] for r in read_metrics(str(out))]
    # updates 1-2: warmup of the first run, 0.01 * (0.5, 0.75); 3: 0.02 (index 2 < step 3); 4-5: 0.02 * 0.1
    assert lrs == pytest.approx([0.005, 0.0075, 0.02, 0.002, 0.002])
    state = torch.load(out / "model_final.pth", weights_only=True)
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    assert groups["rpn.head.cls_logits.bias"]["initial_lr"] == pytest.approx(0.04)  # BIAS_LR_FACTOR 2 x new lr
    assert state["scheduler"]["milestones"] == [3] and state["iteration"] == 5
