"""Checkpointer: round trip, atomic saves (a crash keeps the previous checkpoint), weight loading."""
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from maskrcnn_benchmark.solver import WarmupMultiStepLR
from maskrcnn_benchmark.utils import checkpoint as ckpt_mod
from maskrcnn_benchmark.utils.checkpoint import Checkpointer, get_rng_state, select_rng_state, set_rng_state


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = WarmupMultiStepLR(opt, [5], warmup_iters=2)
    return model, opt, sched


def _train_step(model, opt, sched):
    loss = model(torch.ones(2, 3)).pow(2).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def _files(d):
    return sorted(os.listdir(d))


def test_save_and_resume_roundtrip(tmp_path):
    model, opt, sched = _setup(0)
    _train_step(model, opt, sched)
    ck = Checkpointer(model, opt, sched, str(tmp_path), save_to_disk=True)
    path = ck.save("model_0000001", iteration=1)
    assert _files(tmp_path) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    assert ck.get_checkpoint_file() == path

    model2, opt2, sched2 = _setup(1)
    extra = Checkpointer(model2, opt2, sched2, str(tmp_path)).resume()
    assert extra["iteration"] == 1
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert sched2.last_epoch == sched.last_epoch
    _train_step(model, opt, sched)
    _train_step(model2, opt2, sched2)  # momentum buffers restored -> same update
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_loads_with_weights_only(tmp_path):
    model, opt, sched = _setup()
    path = Checkpointer(model, opt, sched, str(tmp_path), save_to_disk=True).save("m", iteration=3)
    data = torch.load(path, weights_only=True)
    assert data["iteration"] == 3 and "rng_states" in data


def test_rng_state_roundtrip():
    state = get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    assert select_rng_state({"rng_states": [state]}) is state
    assert select_rng_state({}) is None


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = _setup()
    ck = Checkpointer(model, opt, sched, str(tmp_path), save_to_disk=True)
    good = ck.save("model_0000001", iteration=1)
    good_bytes = open(good, "rb").read()

    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # partial content, then the process "dies"
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(torch, "save", crashing_save)
    _train_step(model, opt, sched)
    with pytest.raises(KeyboardInterrupt):
        ck.save("model_0000002", iteration=2)
    with pytest.raises(KeyboardInterrupt):
        ck.save("model_0000001", iteration=2)  # overwriting the good file must not damage it either
    monkeypatch.setattr(torch, "save", real_save)

    assert _files(tmp_path) == ["last_checkpoint", "model_0000001.pth"]  # no temp / half-written files
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    assert open(good, "rb").read() == good_bytes
    assert Checkpointer(_setup()[0], save_dir=str(tmp_path)).resume()["iteration"] == 1


def test_last_checkpoint_naming_missing_file(tmp_path):
    (tmp_path / "last_checkpoint").write_text("model_0000005.pth\n")
    with pytest.raises(FileNotFoundError, match="model_0000005.pth"):
        Checkpointer(nn.Linear(1, 1), save_dir=str(tmp_path)).resume()


def test_no_checkpoint_resume_is_empty(tmp_path):
    ck = Checkpointer(nn.Linear(1, 1), save_dir=str(tmp_path))
    assert not ck.has_checkpoint()
    assert ck.resume() == {}


def test_save_disabled_off_main_process(tmp_path):
    assert Checkpointer(nn.Linear(1, 1), save_dir=str(tmp_path), save_to_disk=False).save("m") is None
    assert _files(tmp_path) == []


def test_missing_weight_file_is_clear_error(tmp_path):
    missing = str(tmp_path / "nope" / "weights.pth")
    with pytest.raises(FileNotFoundError, match="nope/weights.pth"):
        Checkpointer(nn.Linear(1, 1)).load_weights(missing)


def test_catalog_weight_resolved_under_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKRCNN_BENCHMARK_MODELS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ImageNetPretrained/MSRA/R-50"):
        ckpt_mod.resolve_weight_path("catalog://ImageNetPretrained/MSRA/R-50")
    target = tmp_path / "ImageNetPretrained" / "MSRA" / "R-50.pkl"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"")
    assert ckpt_mod.resolve_weight_path("catalog://ImageNetPretrained/MSRA/R-50") == str(target)


def test_load_weights_only_leaves_solver_state(tmp_path):
    model, opt, sched = _setup(0)
    for _ in range(3):
        _train_step(model, opt, sched)
    path = Checkpointer(model, opt, sched, str(tmp_path), save_to_disk=True).save("trained", iteration=3)

    model2, opt2, sched2 = _setup(1)
    ck = Checkpointer(model2, opt2, sched2, str(tmp_path / "new_run"))
    assert ck.load(weight=path) == {}
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert sched2.last_epoch == 0 and opt2.state_dict()["state"] == {}


def test_resume_takes_precedence_over_weight(tmp_path):
    model, opt, sched = _setup(0)
    Checkpointer(model, opt, sched, str(tmp_path), save_to_disk=True).save("model_0000004", iteration=4)
    extra = Checkpointer(_setup(1)[0], save_dir=str(tmp_path)).load(weight=str(tmp_path / "does_not_exist.pth"))
    assert extra["iteration"] == 4
