"""Stall watchdog: a SIGSTOPped rank of a 2-process gloo training run is named with its last iteration
within seconds (lowered DIST_* keys), no false alarm during a long evaluation; the reporting rules on
a fake clock, with the default keys (reported within 3 minutes)."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from maskrcnn_benchmark.config import cfg as defaults
from maskrcnn_benchmark.utils.heartbeat import Heartbeat

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from dist_helpers import free_port  # noqa: E402


def _record(beats, iteration, phase="step", progress=None):
    return {"beats": beats, "progress": iteration if progress is None else progress, "iteration": iteration,
            "phase": phase, "pid": 100, "host": "h"}


def _observer(rank=0, world=2, period=None, timeout=None):
    period = defaults.DIST_HEARTBEAT_PERIOD_S if period is None else period
    timeout = defaults.DIST_STALL_TIMEOUT_S if timeout is None else timeout
    return Heartbeat("/nonexistent", rank, world, period, timeout)


def test_silent_rank_reported_within_3_minutes_with_the_defaults():
    """With the default keys, rank 1 stops right after a beat; rank 0 checks every period and names
    it, with its last iteration and phase, once, within 180 s of the stop."""
    hb = _observer()
    period = hb.period_s
    t, beats0 = 0.0, 0
    records = {0: _record(0, 7), 1: _record(0, 7)}
    reports = hb.check(records, t)  # rank 1 last beat at t = 0, then SIGSTOP
    found_at = None
    while t < 400:
        t += period
        beats0 += 1
        records[0] = _record(beats0, 7)  # rank 0 alive, waiting in its collective
        reports = hb.check(records, t)
        if reports:
            assert found_at is None, "reported twice"
            found_at = t
            assert len(reports) == 1
            assert re.search(r"rank 1 of 2 \(pid 100 on h\) has not sent a heartbeat for \d+ s .*stopped \(SIGSTOP",
                             reports[0])
            assert "last finished iteration: 7, phase 'step'" in reports[0]
    assert found_at is not None and found_at <= 180 - period  # the first check after the stop is <= 1 period later


def test_recovered_rank_reported_again_only_after_a_new_stall():
    hb = _observer(period=1, timeout=3)
    rec = {0: _record(0, 1), 1: _record(0, 1)}
    hb.check(rec, 0)
    assert [hb.check({0: _record(b, 1), 1: rec[1]}, b) for b in range(1, 6)][3]  # reported at t = 4
    assert not hb.check({0: _record(6, 1), 1: _record(1, 2)}, 6)  # SIGCONT: beats again
    assert not hb.check({0: _record(7, 1), 1: _record(1, 2)}, 7)
    assert hb.check({0: _record(10, 1), 1: _record(1, 2)}, 10)  # stopped again


def test_the_lowest_live_rank_reports():
    """Rank 0 is silent: rank 1 (the lowest live rank) reports it; rank 2 stays quiet."""
    r1, r2 = _observer(rank=1, world=3, period=1, timeout=3), _observer(rank=2, world=3, period=1, timeout=3)
    for hb in (r1, r2):
        hb.check({0: _record(0, 4), 1: _record(0, 4), 2: _record(0, 4)}, 0)
    later = {0: _record(0, 4), 1: _record(5, 5), 2: _record(5, 5)}
    assert "rank 0 of 3" in " ".join(r1.check(later, 5))
    assert r2.check(later, 5) == []


def test_no_false_alarm_while_evaluating_or_writing_a_checkpoint():
    """All ranks alive (beats advance) but no iteration for 20 s (> 6 timeouts): no report while a rank
    is in an announced phase ("hooks": evaluation / checkpoint); once both are inside a step without
    progress, one report after the timeout."""
    hb = _observer(period=1, timeout=3)
    for t in range(20):  # rank 0 evaluates, rank 1 waits for it inside its next step
        assert hb.check({0: _record(t, 9, phase="hooks", progress=1), 1: _record(t, 9, progress=1)}, t) == []
    found = {t: hb.check({r: _record(t, 9, progress=2) for r in (0, 1)}, t) for t in range(20, 40)}
    assert [t for t, reports in found.items() if reports] == [24]  # > 3 s after the last progress (t = 20)
    assert "no training progress on any rank" in found[24][0]
    assert "rank 0 at iteration 9, rank 1 at iteration 9" in found[24][0]


def test_bad_keys_refused():
    with pytest.raises(ValueError, match="DIST_HEARTBEAT_PERIOD_S must be > 0"):
        Heartbeat("/x", 0, 1, period_s=0)


def test_heartbeat_files_written_and_removed(tmp_path):
    hb = Heartbeat(str(tmp_path), 0, 1, period_s=0.05, stall_timeout_s=5).start()
    hb.update(iteration=3, phase="step")
    time.sleep(0.3)
    records = hb.read()
    assert records[0]["iteration"] == 3 and records[0]["phase"] == "step" and records[0]["beats"] >= 2
    hb.stop()
    assert not (tmp_path / ".heartbeat").exists()


WORKER = textwrap.dedent(r'''
    import importlib.util, os, signal, sys, time
    sys.path.insert(0, os.environ["MB_ROOT"])
    import torch
    from maskrcnn_benchmark.engine.hooks import HookBase
    from maskrcnn_benchmark.engine.trainer import _heartbeat, do_train
    from maskrcnn_benchmark.utils.checkpoint import Checkpointer
    from maskrcnn_benchmark.utils.comm import get_rank
    from maskrcnn_benchmark.utils.launch import init_distributed
    from maskrcnn_benchmark.utils.logger import setup_logger
    from maskrcnn_benchmark.config import setup_cfg

    spec = importlib.util.spec_from_file_location("standins", os.path.join(os.environ["MB_ROOT"], "tests", "engine",
                                                                           "test_trainer.py"))
    T = importlib.util.module_from_spec(spec); spec.loader.exec_module(T)
    cfg = setup_cfg("", ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", sys.argv[1], "DIST_TIMEOUT_S", 120,
                         "DIST_HEARTBEAT_PERIOD_S", 0.5, "DIST_STALL_TIMEOUT_S", 3])
    init_distributed(None, "cpu", timeout_s=cfg.DIST_TIMEOUT_S)
    setup_logger("maskrcnn_benchmark", None, get_rank())

    class StopAt(HookBase):  # rank 1 stops itself (SIGSTOP) after iteration 8, once its heartbeat says so
        def after_step(self):
            if get_rank() == 1 and self.state.iteration == 8:
                time.sleep(2 * cfg.DIST_HEARTBEAT_PERIOD_S)
                print("stopping at 8", flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)

    def long_evaluation(iteration):  # longer than DIST_STALL_TIMEOUT_S: must raise no alarm
        print(f"evaluating at {iteration}", flush=True)
        time.sleep(5)

    model = T.StandInDetector()
    opt, sched = T._solver(model)
    do_train(model, T.StandInLoader(1000), opt, sched, Checkpointer(model), torch.device("cpu"), 0,
             {"iteration": 0}, max_iter=1000, test_fn=long_evaluation, test_period=4, hooks=[StopAt()],
             heartbeat=_heartbeat(cfg))
''')


def test_sigstopped_rank_named_with_its_last_iteration(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    procs, logs = [], []
    for rank in (0, 1):
        env = dict(os.environ, MB_ROOT=ROOT, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
        logs.append(open(tmp_path / f"rank{rank}.txt", "w+"))
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / "out")], env=env,
                                      stdout=logs[-1], stderr=subprocess.STDOUT, text=True))
    try:
        deadline = time.time() + 150
        out0 = ""
        while time.time() < deadline and "has not sent a heartbeat" not in out0:
            time.sleep(0.5)
            out0 = (tmp_path / "rank0.txt").read_text()
            assert procs[0].poll() is None and procs[1].poll() is None, out0
        out1 = (tmp_path / "rank1.txt").read_text()
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGCONT) if p.poll() is None else None
            p.kill()
            p.wait()
        for f in logs:
            f.close()
    assert "stopping at 8" in out1 and "evaluating at 4" in out1 and "evaluating at 8" in out1, out1
    errors = [line for line in out0.splitlines() if " ERROR: " in line]
    assert len(errors) == 1, out0  # no alarm during the two 5 s evaluations
    assert re.search(r"maskrcnn_benchmark\.heartbeat ERROR: rank 1 of 2 \(pid \d+ on .*\) has not sent a heartbeat "
                     r"for \d+ s \(DIST_STALL_TIMEOUT_S 3\).*last finished iteration: 8, phase 'hooks'", errors[0]), \
        errors[0]
