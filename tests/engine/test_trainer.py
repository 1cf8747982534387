"""Training loop: exact resume, non-finite losses, logging, AMP / clipping, num-classes checks, CLI errors.

Fast checks use a tiny stand-in model and loader with :func:`do_train`; the end-to-end ones train the
real R-18 ATSS detector (configs/atss/atss_R_18_FPN_small.yaml) on a 4-image 64 px COCO dataset.
"""
import importlib.util
import json
import logging
import os
import random
import warnings

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from maskrcnn_benchmark.solver import WarmupMultiStepLR
from maskrcnn_benchmark.structures.bounding_box import BoxList
from maskrcnn_benchmark.structures.image_list import to_image_list
from maskrcnn_benchmark.utils.checkpoint import Checkpointer, select_rng_state
from maskrcnn_benchmark.utils.logger import setup_logger
from maskrcnn_benchmark.engine.hooks import HookBase, check_losses_finite
from maskrcnn_benchmark.engine.trainer import do_train, resolve_amp, seed_all

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_CONFIG = os.path.join(ROOT, "configs", "atss", "atss_R_18_FPN_small.yaml")


# ---- stand-ins -------------------------------------------------------------------------------------
class StandInDetector(nn.Module):
    """Returns two losses from a linear map of the images; ``nan_at`` makes ``loss_reg`` NaN on that call."""

    def __init__(self, nan_at=None):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.calls = 0
        self.nan_at = nan_at

    def forward(self, images, targets):
        self.calls += 1
        out = self.conv(images.tensors).mean(dim=(2, 3))  # [B, 2]
        labels = torch.stack([t.get_field("labels")[0] for t in targets]).float()
        loss_reg = (out[:, 1] - labels).pow(2).mean()
        if self.calls == self.nan_at:
            loss_reg = loss_reg * float("nan")
        return {"loss_cls": out[:, 0].pow(2).mean(), "loss_reg": loss_reg}


class StandInLoader:
    """Iteration-based loader: batch ``t`` depends on ``t`` plus global-RNG "augmentation" (like flips).

    Creating an iterator draws from the global torch RNG, like a DataLoader without a generator.
    """

    def __init__(self, max_iter, start_iter=0, batch=2):
        self.max_iter, self.start_iter, self.batch = max_iter, start_iter, batch

    def __iter__(self):
        torch.rand(1)  # iterator creation consumes randomness (eagerly, as DataLoader does)
        return self._batches()

    def _batches(self):
        for t in range(self.start_iter, self.max_iter):
            g = torch.Generator().manual_seed(t)
            imgs = torch.rand(self.batch, 3, 8, 8, generator=g)
            noise = torch.rand(self.batch, 1, 1, 1) + np.random.rand() + random.random()  # global RNGs
            imgs = imgs * noise
            targets = [BoxList(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), (8, 8)) for _ in range(self.batch)]
            for k, tgt in enumerate(targets):
                tgt.add_field("labels", torch.tensor([1 + (t + k) % 2]))
            yield to_image_list(imgs), targets, tuple(range(self.batch))


def _solver(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return opt, WarmupMultiStepLR(opt, [3], 0.1, warmup_factor=0.5, warmup_iters=2, warmup_method="linear")


def _run(out_dir, max_iter, start_fresh_seed=0, crash_after=None, nan_at=None, period=2, **kw):
    """do_train on the stand-ins, resuming from ``out_dir`` when it has a checkpoint."""
    seed_all(start_fresh_seed)
    model = StandInDetector(nan_at)
    opt, sched = _solver(model)
    ck = Checkpointer(model, opt, sched, str(out_dir), save_to_disk=True)
    extra = ck.resume()
    args = {"iteration": int(extra.get("iteration", 0))}
    if crash_after is not None:
        max_iter_run = max_iter
        loader = _CrashingLoader(StandInLoader(max_iter, args["iteration"]), crash_after - args["iteration"])
    else:
        max_iter_run, loader = max_iter, StandInLoader(max_iter, args["iteration"])
    rng = select_rng_state(extra)
    do_train(model, loader, opt, sched, ck, torch.device("cpu"), period, args, max_iter=max_iter_run,
             rng_state=rng, **kw)
    return model


class _CrashingLoader:
    """Raises KeyboardInterrupt (a killed job) when batch number ``n`` is requested."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n

    def __iter__(self):
        for i, b in enumerate(self.inner):
            if i == self.n:
                raise KeyboardInterrupt("killed")
            yield b


def _state(path):
    return torch.load(path, weights_only=True)


# ---- do_train with stand-ins ---------------------------------------------------------------------------
def test_exact_resume_standin(tmp_path):
    straight = _run(tmp_path / "a", 6)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", 6, crash_after=4)  # checkpoints at 2 and 4, killed while loading batch 5
    assert (tmp_path / "b" / "last_checkpoint").read_text().strip() == "model_0000004.pth"
    resumed = _run(tmp_path / "b", 6, start_fresh_seed=123)  # different init: everything must come from the checkpoint
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    sa, sb = _state(tmp_path / "a" / "model_final.pth"), _state(tmp_path / "b" / "model_final.pth")
    assert sa["iteration"] == sb["iteration"] == 6
    for x, y in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(x["momentum_buffer"], y["momentum_buffer"])
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"] == 6


def test_resume_without_rng_restore_differs(tmp_path):
    """Sanity check of the test above: the global-RNG augmentation matters."""
    straight = _run(tmp_path / "a", 4)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", 4, crash_after=2)
    data = torch.load(tmp_path / "b" / "model_0000002.pth", weights_only=True)
    data.pop("rng_states")
    torch.save(data, tmp_path / "b" / "model_0000002.pth")
    resumed = _run(tmp_path / "b", 4)
    assert not torch.equal(straight.conv.weight, resumed.conv.weight)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match=r"^Loss became non-finite at iteration 3: loss_reg=nan"):
        _run(tmp_path, 6, nan_at=3)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000002.pth"]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000002.pth"
    assert _state(tmp_path / "model_0000002.pth")["iteration"] == 2


def test_periodic_test_does_not_change_training(tmp_path):
    calls = []

    def test_fn(iteration):
        calls.append(iteration)
        torch.rand(5), np.random.rand(), random.random()  # evaluation may draw random numbers

    plain = _run(tmp_path / "a", 5)
    tested = _run(tmp_path / "b", 5, test_fn=test_fn, test_period=2)
    assert calls == [2, 4]
    assert torch.equal(plain.conv.weight, tested.conv.weight) and tested.training


def test_check_losses_finite_names_terms():
    check_losses_finite({"a": torch.tensor(1.0)}, 1)
    with pytest.raises(FloatingPointError, match="iteration 7: loss_a=inf, loss_c=nan"):
        check_losses_finite({"loss_a": torch.tensor(float("inf")), "loss_b": torch.tensor(1.0),
                             "loss_c": torch.tensor(float("nan"))}, 7)


def test_log_lines_and_file(tmp_path):
    setup_logger("maskrcnn_benchmark", str(tmp_path), 0)
    try:
        _run(tmp_path, 4, period=0, log_period=2, logger=logging.getLogger("maskrcnn_benchmark.trainer"))
    finally:
        for h in logging.getLogger("maskrcnn_benchmark").handlers:
            h.flush()
    lines = [ln for ln in (tmp_path / "log.txt").read_text().splitlines() if "iter: " in ln]
    assert len(lines) == 2 and "iter: 2/4" in lines[0] and "iter: 4/4" in lines[1]
    for field in ("eta: ", "loss: ", "loss_cls: ", "loss_reg: ", "time: ", "data: ", "lr: ", "rss: "):
        assert field in lines[1]
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == ["model_final.pth"]
    setup_logger("maskrcnn_benchmark", None, 1)  # detach the file handler


class _Recorder(HookBase):
    """Records every call with the state it sees."""

    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def before_train(self):
        self.events.append(("before_train", self.state.iteration, self.state.start_iter))

    def before_step(self):
        self.events.append(("before_step", self.state.iteration))

    def after_losses(self, loss_dict):
        self.events.append(("after_losses", self.state.iteration, sorted(loss_dict)))
        if self.state.iteration == self.stop_at:
            raise RuntimeError("stop")

    def after_step(self):
        s = self.state
        self.events.append(("after_step", s.iteration, s.arguments["iteration"], round(s.lr, 6)))

    def after_train(self):
        self.events.append(("after_train", self.state.iteration))


def test_extra_hook_sees_every_step_in_order(tmp_path):
    rec = _Recorder()
    _run(tmp_path, 3, period=0, hooks=[rec])
    lrs = [0.1 * 0.5, 0.1 * (0.5 + 0.5 * 0.5), 0.1]  # linear warm-up, factor 0.5 -> 1 over 2 its
    assert rec.events[0] == ("before_train", 0, 0)
    steps = rec.events[1:-1]
    assert len(steps) == 9
    for i in range(3):
        assert steps[3 * i] == ("before_step", i + 1)
        assert steps[3 * i + 1] == ("after_losses", i + 1, ["loss_cls", "loss_reg"])
        assert steps[3 * i + 2] == ("after_step", i + 1, i + 1, round(lrs[i], 6))
    assert rec.events[-1] == ("after_train", 3)
    assert rec.state.loss_dict.keys() == {"loss_cls", "loss_reg"}


def test_hook_after_losses_runs_before_the_update(tmp_path):
    torch.manual_seed(0)
    model = StandInDetector()
    opt, sched = _solver(model)
    rec = _Recorder(stop_at=2)
    weights = []

    class Snapshot(HookBase):
        def after_step(self):
            weights.append(model.conv.weight.detach().clone())

    with pytest.raises(RuntimeError, match="stop"):
        do_train(model, StandInLoader(3), opt, sched, Checkpointer(model), torch.device("cpu"), 0,
                 {"iteration": 0}, max_iter=3, hooks=[Snapshot(), rec])
    assert len(weights) == 1 and torch.equal(model.conv.weight, weights[0])  # step 2 never applied
    assert rec.events[-1] == ("after_losses", 2, ["loss_cls", "loss_reg"])


def test_gradient_clipping_bounds_the_step(tmp_path):
    torch.manual_seed(0)
    model = StandInDetector()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = WarmupMultiStepLR(opt, [100], warmup_iters=0)
    before = [p.detach().clone() for p in model.parameters()]
    do_train(model, StandInLoader(1), opt, sched, Checkpointer(model), torch.device("cpu"), 0,
             {"iteration": 0}, max_iter=1, clip_grad_norm=1e-3)
    step = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert 0 < step.item() <= 1e-3 * (1 + 1e-4)


def test_bf16_autocast_on_cpu_runs(tmp_path):
    torch.manual_seed(0)
    model = StandInDetector()
    opt, sched = _solver(model)
    do_train(model, StandInLoader(2), opt, sched, Checkpointer(model), torch.device("cpu"), 0, {"iteration": 0},
             max_iter=2, amp_dtype=resolve_amp("bf16", torch.device("cpu")))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resolve_amp():
    cpu = torch.device("cpu")
    assert resolve_amp("", cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    with pytest.warns(UserWarning, match="fp16"):
        assert resolve_amp("fp16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="SOLVER.AMP"):
        resolve_amp("fp8", cpu)


def test_cpu_bf16_detection_and_warning(tmp_path, monkeypatch):
    """cpu_has_native_bf16 reads the cpuinfo flags line; resolve_amp warns for bf16 on a CPU without them."""
    from maskrcnn_benchmark.utils import amp

    def cpuinfo(flags):
        path = tmp_path / ("cpuinfo_" + "_".join(flags))
        path.write_text("processor\t: 0\nmodel name\t: x\nflags\t\t: " + " ".join(flags) + "\n\n")
        return str(path)
    assert amp.cpu_has_native_bf16(cpuinfo(["fpu", "avx2", "avx512f"])) is False
    assert amp.cpu_has_native_bf16(cpuinfo(["fpu", "avx512f", "avx512_bf16"])) is True
    assert amp.cpu_has_native_bf16(cpuinfo(["fpu", "amx_bf16", "amx_tile"])) is True
    assert amp.cpu_has_native_bf16(str(tmp_path / "missing")) is None
    cpu = torch.device("cpu")
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="TEST.AMP bf16 on a CPU without native bf16"):
        assert amp.resolve_amp("bf16", cpu, key="TEST.AMP") is torch.bfloat16
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert amp.resolve_amp("bf16", cpu) is torch.bfloat16
        assert amp.resolve_amp("", cpu) is None


# ---- the real detector ------------------------------------------------------------------------------------
def make_tiny_coco(root, n=4, size=64, seed=0, names=("square", "bar")):
    """``n`` images of ``size`` px with one filled rectangle each; returns the "<json>:<folder>" name."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img = np.full((size, size, 3), 40, np.uint8)
        x1, y1 = (int(v) for v in rng.integers(2, size // 2, 2))
        w, h = (int(v) for v in rng.integers(12, size // 2, 2))
        c = i % len(names)
        cv2.rectangle(img, (x1, y1), (x1 + w, y1 + h), (200, 60 + 150 * c, 80), -1)
        cv2.imwrite(os.path.join(root, "img", f"{i}.png"), img)
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": size, "width": size})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": c + 1, "bbox": [x1, y1, w, h],
                     "area": float(w * h), "iscrowd": 0})
    ann = os.path.join(root, "ann.json")
    with open(ann, "w") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": k + 1, "name": v} for k, v in enumerate(names)]}, f)
    return f"{ann}:{os.path.join(root, 'img')}"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return make_tiny_coco(str(tmp_path_factory.mktemp("tiny_coco")))


def _opts(dataset, out_dir, **extra):
    opts = {"MODEL.DEVICE": "cpu", "DATASETS.TRAIN": (dataset,), "DATASETS.TEST": (dataset,),
            "OUTPUT_DIR": str(out_dir), "DATALOADER.NUM_WORKERS": 0, "SOLVER.IMS_PER_BATCH": 2,
            "TEST.IMS_PER_BATCH": 2, "INPUT.MIN_SIZE_RANGE_TRAIN": (56, 72), "INPUT.MAX_SIZE_TRAIN": 96,
            "INPUT.MIN_SIZE_TEST": 64, "INPUT.MAX_SIZE_TEST": 96, "INPUT.FLIP_PROB_TRAIN": 0.5,
            "SOLVER.MAX_ITER": 4, "SOLVER.CHECKPOINT_PERIOD": 2, "SOLVER.STEPS": (3,), "SOLVER.WARMUP_ITERS": 2,
            "SOLVER.LOG_PERIOD": 2, "SOLVER.BASE_LR": 0.01}
    opts.update(extra)
    return [x for kv in opts.items() for x in kv]


def _cfg(dataset, out_dir, **extra):
    from maskrcnn_benchmark.config import setup_cfg

    return setup_cfg(SMALL_CONFIG, _opts(dataset, out_dir, **extra))


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_exact_resume_real_detector(tmp_path, tiny_dataset, monkeypatch):
    from maskrcnn_benchmark.engine.trainer import train

    torch.set_num_threads(1)
    train(_cfg(tiny_dataset, tmp_path / "a"), skip_test=True)

    real_save = Checkpointer.save

    def save_then_die(self, name, **extra):
        path = real_save(self, name, **extra)
        if name == "model_0000002":
            raise KeyboardInterrupt("killed after the checkpoint")
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_dataset, tmp_path / "b"), skip_test=True)
    monkeypatch.setattr(Checkpointer, "save", real_save)
    assert (tmp_path / "b" / "last_checkpoint").read_text().strip() == "model_0000002.pth"
    train(_cfg(tiny_dataset, tmp_path / "b"), skip_test=True)  # resumes from model_0000002

    a, b = _state(tmp_path / "a" / "model_final.pth"), _state(tmp_path / "b" / "model_final.pth")
    assert a["iteration"] == b["iteration"] == 4
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    saved = (tmp_path / "b" / "config.yml").read_text()
    assert "NUM_CLASSES: 3" in saved  # NUM_CLASSES 0 in the yaml -> 2 foreground classes + 1


def test_num_classes_mismatch_names_both_numbers(tmp_path, tiny_dataset):
    from maskrcnn_benchmark.engine.trainer import train

    with pytest.raises(ValueError) as e:
        train(_cfg(tiny_dataset, tmp_path, **{"MODEL.ATSS.NUM_CLASSES": 81}), skip_test=True)
    msg = str(e.value)
    assert "MODEL.ATSS.NUM_CLASSES = 81" in msg and "2 foreground classes" in msg and "must be 3" in msg
    assert tiny_dataset in msg
    assert not os.path.exists(tmp_path / "last_checkpoint")


def test_missing_model_weight_is_clear_error(tmp_path, tiny_dataset):
    from maskrcnn_benchmark.engine.trainer import train

    missing = str(tmp_path / "no_such_weights.pth")
    with pytest.raises(FileNotFoundError, match="no_such_weights.pth"):
        train(_cfg(tiny_dataset, tmp_path / "out", **{"MODEL.WEIGHT": missing}), skip_test=True)


def test_unknown_config_key_on_command_line(capsys):
    tool = _load_tool("train_net")
    with pytest.raises(SystemExit) as e:
        tool.main(["--config-file", SMALL_CONFIG, "SOLVER.NOT_A_KEY", "3"])
    assert e.value.code == 2
    assert "Non-existent config key: SOLVER.NOT_A_KEY" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--config-file", SMALL_CONFIG, "SOLVER.MAX_ITER"])  # odd KEY VALUE list
    assert "KEY VALUE" in capsys.readouterr().err


def test_local_rank_spellings():
    tool = _load_tool("train_net")
    for argv in (["--local-rank=1"], ["--local_rank", "1"], ["--local-rank", "1"]):
        assert tool.build_parser().parse_args(argv).local_rank == 1


def _kill_after_checkpoint(monkeypatch, name):
    real_save = Checkpointer.save

    def save_then_die(self, ckpt_name, **extra):
        path = real_save(self, ckpt_name, **extra)
        if ckpt_name == name:
            raise KeyboardInterrupt("killed after the checkpoint")
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    return real_save


@pytest.mark.slow
def test_exact_resume_with_loader_workers(tmp_path, tiny_dataset, monkeypatch):
    """0, 1 and 2 loader workers, the latter two killed after iteration 2 and resumed: all three end
    with bit-identical weights (multi-scale sizes and flips are drawn per sample from its seed)."""
    from maskrcnn_benchmark.engine.trainer import train

    torch.set_num_threads(1)
    train(_cfg(tiny_dataset, tmp_path / "w0", **{"DATALOADER.NUM_WORKERS": 0}), skip_test=True)
    reference = _state(tmp_path / "w0" / "model_final.pth")["model"]
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        real_save = _kill_after_checkpoint(monkeypatch, "model_0000002")
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(tiny_dataset, out, **{"DATALOADER.NUM_WORKERS": workers}), skip_test=True)
        monkeypatch.setattr(Checkpointer, "save", real_save)
        train(_cfg(tiny_dataset, out, **{"DATALOADER.NUM_WORKERS": workers}), skip_test=True)
        final = _state(out / "model_final.pth")["model"]
        differ = [k for k in reference if not torch.equal(reference[k], final[k])]
        assert not differ, f"{workers} workers: {len(differ)} tensors differ, e.g. {differ[:3]}"


def test_loader_batches_do_not_depend_on_workers_or_start(tmp_path, tiny_dataset):
    """The produced batches (image sizes, pixels = flips) for 0/1/2 workers and a loader started at
    iteration 3 are the same, and the random transforms do matter (sizes vary)."""
    from maskrcnn_benchmark.data import make_data_loader

    def batches(workers, start_iter=0):
        cfg = _cfg(tiny_dataset, tmp_path, **{"DATALOADER.NUM_WORKERS": workers, "SOLVER.MAX_ITER": 6})
        return [(images.tensors, [t.bbox for t in targets], idx)
                for images, targets, idx in make_data_loader(cfg, is_train=True, start_iter=start_iter)]

    ref = batches(0)
    assert len({b[0].shape for b in ref}) > 1  # multi-scale sizes were drawn
    for got in (batches(1), batches(2), [None] * 3 + batches(2, start_iter=3)):
        for t, (a, b) in enumerate(zip(ref, got)):
            if b is None:
                continue
            assert a[2] == b[2] and torch.equal(a[0], b[0]), t
            assert all(torch.equal(x, y) for x, y in zip(a[1], b[1])), t


def test_max_iter_must_be_positive(tmp_path, tiny_dataset):
    from maskrcnn_benchmark.engine.trainer import train

    for bad in (0, -5):
        with pytest.raises(ValueError, match=f"SOLVER.MAX_ITER must be positive.*got {bad}"):
            train(_cfg(tiny_dataset, tmp_path, **{"SOLVER.MAX_ITER": bad}), skip_test=True)
    assert not os.path.exists(tmp_path / "model_final.pth")


def test_training_holds_output_dir_lock_and_keeps_last_checkpoints(tmp_path, tiny_dataset, monkeypatch):
    """While training, OUTPUT_DIR is locked (a second run stops naming this process); at the end the lock
    is gone and only the newest SOLVER.CHECKPOINT_KEEP periodic checkpoints remain (plus model_final)."""
    from maskrcnn_benchmark.engine.trainer import train
    from maskrcnn_benchmark.utils.run_lock import LOCK_NAME, OutputDirLockedError

    second_run_errors = []
    real_save = Checkpointer.save

    def save_and_try_second_run(self, name, **extra):
        try:
            train(_cfg(tiny_dataset, tmp_path), skip_test=True)
        except OutputDirLockedError as e:
            second_run_errors.append(str(e))
        return real_save(self, name, **extra)

    monkeypatch.setattr(Checkpointer, "save", save_and_try_second_run)
    train(_cfg(tiny_dataset, tmp_path, **{"SOLVER.CHECKPOINT_PERIOD": 1, "SOLVER.CHECKPOINT_KEEP": 2}),
          skip_test=True)
    assert len(second_run_errors) == 4 and all(f"pid {os.getpid()}" in e for e in second_run_errors)
    assert not (tmp_path / LOCK_NAME).exists()
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == [
        "model_0000002.pth", "model_0000003.pth", "model_final.pth"]


def test_log_config_changes_sources(tmp_path, caplog):
    """The checkpoint's "config" entry is compared first; older checkpoints fall back to config.yml; with
    neither, the log says nothing can be compared."""
    from maskrcnn_benchmark.config import cfg as default_cfg
    from maskrcnn_benchmark.engine.trainer import log_config_changes

    logger = logging.getLogger("maskrcnn_benchmark.test_resume")
    new = default_cfg.clone()
    new.SOLVER.MAX_ITER = 7
    yml = tmp_path / "config.yml"
    with caplog.at_level(logging.INFO):
        assert log_config_changes({"config": default_cfg.dump()}, new, 3, str(yml), logger) == [
            ("SOLVER.MAX_ITER", default_cfg.SOLVER.MAX_ITER, 7)]
        assert "SOLVER.MAX_ITER: 40000 -> 7" in caplog.text and "the config in force" in caplog.text
        caplog.clear()
        assert log_config_changes({}, new, 3, str(yml), logger) == []
        assert "holds no config" in caplog.text
        yml.write_text(new.dump())
        caplog.clear()
        assert log_config_changes({}, new, 3, str(yml), logger) == []
        assert "no differences" in caplog.text and str(yml) in caplog.text


def test_check_losses_finite_reads_the_terms_only_to_name_bad_ones():
    # float32 sum of the terms overflows, the float64 total of the slow path does not: no error
    check_losses_finite({"a": torch.tensor(3e38), "b": torch.tensor(3e38)}, 1)
    with pytest.raises(FloatingPointError, match="iteration 2: b=nan"):
        check_losses_finite({"a": torch.tensor(1.0), "b": torch.tensor(float("nan"))}, 2)
    check_losses_finite({}, 3)
    # the floats TrainState.loss_values() read (no further transfer)
    check_losses_finite({"a": 3e38, "b": 3e38}, 4)
    with pytest.raises(FloatingPointError, match="iteration 5: b=inf"):
        check_losses_finite({"a": 1.0, "b": float("inf")}, 5)
    with pytest.raises(FloatingPointError, match="iteration 6: total=inf"):
        check_losses_finite({"a": 1e308, "b": 1e308}, 6)


def test_logging_hook_meters_hold_every_iteration():
    from maskrcnn_benchmark.engine.hooks import LoggingHook, TrainState

    hook = LoggingHook(log_period=3, show_progress=False)
    hook.state = TrainState(model=nn.Identity(), optimizer=None, scheduler=None, device=torch.device("cpu"),
                            arguments={}, start_iter=0, max_iter=5)
    hook.before_train()
    rows = [(1.0, 0.5), (2.0, 0.25), (4.0, 0.125), (8.0, 1.0), (0.5, 0.5)]
    for it, (a, b) in enumerate(rows, 1):
        hook.state.iteration = it
        hook.state.loss_dict = {"loss_a": torch.tensor(a), "loss_b": torch.tensor(b)}
        hook.after_step()
        assert hook.meters.meters["loss_a"].count == it  # from TrainState.loss_values(): one read per iteration
    m = hook.meters.meters
    assert list(m["loss_a"].deque) == [a for a, _ in rows]
    assert m["loss"].global_avg == pytest.approx(sum(a + b for a, b in rows) / 5)
    assert m["loss_b"].median == 0.5
