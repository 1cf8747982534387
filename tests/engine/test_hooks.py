"""Training hooks with the stand-in model / loader of test_trainer: metrics.jsonl lines (the means of the
logged values, evaluation lines, resume without doubled lines), TensorBoard, EMA order and exact resume."""
import importlib.util
import logging
import os
import sys

import pytest
import torch

from maskrcnn_benchmark.engine.hooks import HookBase
from maskrcnn_benchmark.engine.trainer import do_train, seed_all
from maskrcnn_benchmark.solver.ema import ModelEMA
from maskrcnn_benchmark.utils.checkpoint import Checkpointer, select_rng_state
from maskrcnn_benchmark.utils.metrics_io import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _trainer_tests():
    spec = importlib.util.spec_from_file_location("test_trainer_standins",
                                                  os.path.join(ROOT, "tests", "engine", "test_trainer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


T = _trainer_tests()


class Recorder(HookBase):
    """Records, per iteration, the losses (floats), the lr and the timings the loop measured."""

    def __init__(self):
        self.rows = {}

    def after_step(self):
        s = self.state
        row = {k: float(v) for k, v in s.loss_dict.items()}
        row.update(loss=sum(row.values()), lr=s.lr, time=s.step_time, data_time=s.data_time)
        self.rows[s.iteration] = row


def _mean(rows, its, key):
    return sum(rows[i][key] for i in its) / len(its)


def test_metrics_lines_hold_the_means_of_the_logged_values(tmp_path):
    rec = Recorder()
    evals = []

    def test_fn(iteration):
        evals.append(iteration)
        return {"val": {"AP": 0.01 * iteration, "AP50": 0.5}}

    T._run(tmp_path, 5, log_period=2, metrics_dir=str(tmp_path), test_fn=test_fn, test_period=2, test_final=True,
           hooks=[rec])
    assert evals == [2, 4, 5]
    records = read_metrics(str(tmp_path))
    assert [(r["iteration"], "dataset" in r) for r in records] == [
        (2, False), (2, True), (4, False), (4, True), (5, False), (5, True)]
    for record, its in zip([r for r in records if "dataset" not in r], ([1, 2], [3, 4], [5])):
        assert set(record) == {"iteration", "lr", "time", "data_time", "loss", "loss_cls", "loss_reg"}  # no memory on CPU
        assert record["lr"] == rec.rows[its[-1]]["lr"]
        for key in ("loss", "loss_cls", "loss_reg", "time", "data_time"):
            assert record[key] == pytest.approx(_mean(rec.rows, its, key), rel=1e-6), (its, key)
    assert [r["lr"] for r in records if "lr" in r] == pytest.approx([0.075, 0.01, 0.01])  # warmup, then step 3
    for record in (r for r in records if "dataset" in r):
        assert record == {"iteration": record["iteration"], "dataset": "val",
                          "bbox/AP": pytest.approx(0.01 * record["iteration"]), "bbox/AP50": 0.5}


def test_metrics_resume_appends_without_doubled_lines(tmp_path):
    straight = tmp_path / "a"
    T._run(straight, 6, log_period=1, metrics_dir=str(straight), period=3)
    resumed = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        T._run(resumed, 6, crash_after=5, log_period=1, metrics_dir=str(resumed), period=3)  # checkpoint at 3
    assert [r["iteration"] for r in read_metrics(str(resumed))] == [1, 2, 3, 4, 5]  # killed loading batch 6
    with open(resumed / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 6, "lo')  # a write cut short by the kill
    T._run(resumed, 6, log_period=1, metrics_dir=str(resumed), period=3)  # resumes at 3: lines 4, 5 dropped
    a, b = read_metrics(str(straight)), read_metrics(str(resumed))
    assert [r["iteration"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):  # exact resume: the same losses and lr at every line
        for key in ("lr", "loss", "loss_cls", "loss_reg"):
            assert ra[key] == rb[key], (ra["iteration"], key)


def test_tensorboard_events_hold_the_same_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    T._run(tmp_path, 4, log_period=2, metrics_dir=str(tmp_path))
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path))
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    lines = read_metrics(str(tmp_path))
    for key in ("loss_cls", "lr"):
        events = acc.Scalars(f"train/{key}")
        assert [e.step for e in events] == [2, 4]
        assert [e.value for e in events] == pytest.approx([r[key] for r in lines], rel=1e-6)


def test_without_tensorboard_an_info_line_and_no_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with caplog.at_level(logging.INFO):
        T._run(tmp_path, 2, log_period=1, metrics_dir=str(tmp_path))
    assert [r["iteration"] for r in read_metrics(str(tmp_path))] == [1, 2]
    assert not any(n.startswith("events.out") for n in os.listdir(tmp_path))
    notes = [r for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO


def _run_ema(out_dir, max_iter, decay=0.8, crash_after=None, test_fn=None, test_period=0):
    seed_all(0)
    model = T.StandInDetector()
    opt, sched = T._solver(model)
    ema = ModelEMA(model, decay)
    ck = Checkpointer(model, opt, sched, str(out_dir), save_to_disk=True, ema=ema)
    extra = ck.resume()
    args = {"iteration": int(extra.get("iteration", 0))}
    loader = T.StandInLoader(max_iter, args["iteration"])
    if crash_after is not None:
        loader = T._CrashingLoader(loader, crash_after - args["iteration"])
    do_train(model, loader, opt, sched, ck, torch.device("cpu"), 2, args, max_iter=max_iter, ema=ema,
             rng_state=select_rng_state(extra), test_fn=test_fn, test_period=test_period)
    return model, ema


def test_ema_is_updated_before_evaluation_and_resumes_bit_exactly(tmp_path):
    seen = []
    holder = {}

    def test_fn(iteration):
        seen.append((iteration, holder["ema"].updates))

    class Capture(ModelEMA):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            holder["ema"] = self

    model, ema = _run_ema(tmp_path / "a", 6)
    # the stand-in run, with an EMA that records itself so test_fn can see it
    seed_all(0)
    m2 = T.StandInDetector()
    opt, sched = T._solver(m2)
    ema2 = Capture(m2, 0.8)
    do_train(m2, T.StandInLoader(6), opt, sched, Checkpointer(m2, opt, sched), torch.device("cpu"), 0,
             {"iteration": 0}, max_iter=6, ema=ema2, test_fn=test_fn, test_period=2)
    assert seen == [(2, 2), (4, 4)]  # the evaluation of iteration k sees the average after update k
    assert all(torch.equal(ema.model.state_dict()[k], v) for k, v in ema2.model.state_dict().items())
    assert not torch.equal(ema.model.conv.weight, model.conv.weight)

    with pytest.raises(KeyboardInterrupt):
        _run_ema(tmp_path / "b", 6, crash_after=5)  # checkpoints at 2 and 4
    saved = torch.load(tmp_path / "b" / "model_0000004.pth", weights_only=True)
    assert saved["ema"]["updates"] == 4
    _, resumed = _run_ema(tmp_path / "b", 6)
    assert resumed.updates == 6
    for k, v in ema.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


class _HeadWithStats(torch.nn.Module):
    """A module that, like DenseHead, leaves ``step_metrics`` and names its assigner's keys."""

    class _Assigner:
        tuning_keys = ("MODEL.ATSS.TOPK", "INPUT.MIN_SIZE_TRAIN")

    def __init__(self):
        super().__init__()
        self.assigner = self._Assigner()
        self.step_metrics = {}


def test_unmatched_gt_warning_counts_the_log_period(caplog):
    from maskrcnn_benchmark.engine.hooks import TrainState, UnmatchedGTWarning, collect_step_metrics

    model = torch.nn.Sequential(torch.nn.Linear(1, 1), _HeadWithStats())
    state = TrainState(model=model, optimizer=None, scheduler=None, device=torch.device("cpu"),
                       arguments={}, start_iter=0, max_iter=5)
    hook = UnmatchedGTWarning(log_period=2)
    hook.state = state
    hook.before_train()
    # per iteration: (num_gt, unmatched, smallest unmatched size)
    steps = [(10, 0, float("inf")), (8, 3, 2.5), (6, 1, 4.0), (4, 0, float("inf")), (5, 2, 1.5)]
    logger = logging.getLogger("maskrcnn_benchmark.trainer")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for it, (n, u, size) in enumerate(steps, start=1):
            state.iteration = it
            model[1].step_metrics = {"num_gt": torch.tensor(n), "num_gt_unmatched": torch.tensor(u),
                                     "min_unmatched_size": torch.tensor(size)}
            state.loss_dict = {"loss_a": torch.tensor(0.5 * it)}
            state.step_metrics = collect_step_metrics(model)
            assert state.loss_values()["loss_a"] == 0.5 * it
            hook.after_step()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # iterations 1-2: 3 of 18, smallest 2.5; 3-4: 1 of 10, smallest 4.0; 5 (the end): 2 of 5
    assert len(warnings) == 3
    assert warnings[0].startswith("3 of 18 GT boxes got no positive sample over the last 2 iteration")
    assert "2.5 px" in warnings[0] and "MODEL.ATSS.TOPK, INPUT.MIN_SIZE_TRAIN" in warnings[0]
    assert warnings[1].startswith("1 of 10 ") and "4.0 px" in warnings[1]
    assert warnings[2].startswith("2 of 5 ") and "last 1 iteration" in warnings[2]


def test_loss_and_step_metrics_are_read_in_one_transfer(monkeypatch):
    from maskrcnn_benchmark.engine.hooks import TrainState

    state = TrainState(model=torch.nn.Linear(1, 1), optimizer=None, scheduler=None,
                       device=torch.device("cpu"), arguments={}, start_iter=0, max_iter=1)
    state.loss_dict = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}
    state.step_metrics = {"num_gt": torch.tensor(7), "min_unmatched_size": torch.tensor(float("inf"))}
    calls = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: calls.append(t.shape) or real_tolist(t))
    assert state.loss_values() == {"loss": 3.0, "a": 1.0, "b": 2.0}
    assert state.metric_values() == {"num_gt": 7.0, "min_unmatched_size": float("inf")}
    assert calls == [(4,)]
