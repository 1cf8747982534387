"""Checkpointer: round trip, atomic saves (a crash keeps the previous checkpoint), weight loading."""
import logging
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


# ---- nothing lost: bad last_checkpoint, truncated files, non-finite weights, pruning -------------------
def _saved_run(tmp_path, iterations=(2, 4), keep=0):
    model, opt, sched = _setup(0)
    ck = Checkpointer(model, opt, sched, str(tmp_path), save_to_disk=True, keep=keep)
    for it in iterations:
        _train_step(model, opt, sched)
        ck.save(f"model_{it:07d}", iteration=it)
    return model


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"\x00\xff\xfe garbage", b"not a file name"])
def test_bad_last_checkpoint_falls_back_to_newest_readable(tmp_path, caplog, content):
    _saved_run(tmp_path)
    (tmp_path / "last_checkpoint").write_bytes(content)
    ck = Checkpointer(_setup(1)[0], save_dir=str(tmp_path))
    assert ck.has_checkpoint()
    with caplog.at_level("WARNING"):
        assert ck.resume()["iteration"] == 4
    assert "last_checkpoint" in caplog.text and "model_0000004.pth" in caplog.text


def test_missing_last_checkpoint_with_checkpoints_resumes(tmp_path):
    _saved_run(tmp_path)
    (tmp_path / "last_checkpoint").unlink()
    ck = Checkpointer(_setup(1)[0], save_dir=str(tmp_path))
    assert ck.has_checkpoint() and ck.resume()["iteration"] == 4


@pytest.mark.parametrize("damage", ["truncate", "empty", "not_a_checkpoint"])
def test_broken_newest_checkpoint_falls_back_with_warning(tmp_path, caplog, damage):
    _saved_run(tmp_path)
    newest = tmp_path / "model_0000004.pth"
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(2)}, newest)
    with caplog.at_level("WARNING"):
        extra = Checkpointer(_setup(1)[0], save_dir=str(tmp_path)).resume()
    assert extra["iteration"] == 2
    assert "model_0000004.pth" in caplog.text and "Resuming from" in caplog.text


def test_no_readable_checkpoint_stops_instead_of_restarting(tmp_path):
    _saved_run(tmp_path)
    for name in ("model_0000002.pth", "model_0000004.pth"):
        (tmp_path / name).write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(RuntimeError) as e:
        Checkpointer(_setup(1)[0], save_dir=str(tmp_path)).resume()
    assert "model_0000002.pth" in str(e.value) and "model_0000004.pth" in str(e.value)


def test_non_finite_model_is_not_saved(tmp_path):
    model = _saved_run(tmp_path, iterations=(2,))
    before = (tmp_path / "model_0000002.pth").read_bytes()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
        model[2].bias[1] = float("inf")
    ck = Checkpointer(model, save_dir=str(tmp_path), save_to_disk=True)
    with pytest.raises(FloatingPointError, match=r"model_0000004\.pth.*2 model tensor\(s\).*0\.weight, 2\.bias"):
        ck.save("model_0000004", iteration=4)
    assert _files(tmp_path) == ["last_checkpoint", "model_0000002.pth"]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000002.pth"
    assert (tmp_path / "model_0000002.pth").read_bytes() == before


def test_keep_last_periodic_checkpoints(tmp_path):
    model = _saved_run(tmp_path, iterations=(1, 2), keep=2)
    ck = Checkpointer(model, save_dir=str(tmp_path), save_to_disk=True, keep=2)
    ck.save("model_final", iteration=2)
    for it in (3, 4, 5):
        ck.save(f"model_{it:07d}", iteration=it)
    assert _files(tmp_path) == ["last_checkpoint", "model_0000004.pth", "model_0000005.pth", "model_final.pth"]
    # the file last_checkpoint names is never deleted, even when older than the kept ones
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth\n")
    Checkpointer(model, save_dir=str(tmp_path), save_to_disk=True, keep=1).prune()
    assert _files(tmp_path) == ["last_checkpoint", "model_0000004.pth", "model_0000005.pth", "model_final.pth"]
    ck0 = Checkpointer(model, save_dir=str(tmp_path), save_to_disk=True, keep=0)
    ck0.save("model_0000006", iteration=6)
    assert "model_0000004.pth" in _files(tmp_path)  # keep 0: keep all


def test_weight_file_empty_or_not_a_state_dict(tmp_path):
    model = nn.Linear(3, 2)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pth \(empty file\)"):
        Checkpointer(model).load_weights(str(empty))
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match=r"tensor\.pth holds Tensor, not a state dict"):
        Checkpointer(model).load_weights(str(tensor))


def test_weight_matching_too_little_is_error_unless_allowed(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.proj.weight": torch.ones(4, 3), "encoder.proj.bias": torch.ones(4),
                "1.bias": torch.full((2,), 7.0)}, foreign)
    with pytest.raises(ValueError) as e:
        Checkpointer(model).load_weights(str(foreign), min_match=0.5)
    msg = str(e.value)
    assert "foreign.pth" in msg and "only 1 of its 3 tensors" in msg and "encoder.proj.weight" in msg
    assert "MODEL.WEIGHT_MIN_MATCH 0" in msg
    Checkpointer(model).load_weights(str(foreign), min_match=0.3)
    assert torch.equal(model[1].bias, torch.full((2,), 7.0))
    none = tmp_path / "none.pth"
    torch.save({"other.weight": torch.ones(1)}, none)
    with pytest.raises(ValueError, match="only 0 of its 1 tensors"):
        Checkpointer(model).load_weights(str(none), min_match=0.01)
    Checkpointer(model).load_weights(str(none), min_match=0)  # explicitly allowed


def test_resume_keeps_the_current_hyperparameters_and_the_saved_state(tmp_path):
    """The checkpoint gives the momentum buffers and the schedule position; the optimizer / scheduler
    built from the config in force keep their lr, weight decay, momentum and milestones."""
    model, opt, sched = _setup(0)
    for _ in range(3):
        _train_step(model, opt, sched)
    Checkpointer(model, opt, sched, str(tmp_path), save_to_disk=True).save("model_0000003", iteration=3)

    model2 = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.5, momentum=0.8, weight_decay=1e-3)
    sched2 = WarmupMultiStepLR(opt2, [3], gamma=0.5, warmup_iters=2)
    Checkpointer(model2, opt2, sched2, str(tmp_path)).resume()
    for group in opt2.param_groups:
        assert (group["momentum"], group["weight_decay"], group["initial_lr"]) == (0.8, 1e-3, 0.5)
        assert group["lr"] == pytest.approx(0.5 * 0.5)  # index 3 >= milestone 3, warmup over
    assert sched2.last_epoch == 3 and sched2.milestones == [3]
    for p, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[p2]["momentum_buffer"])


def test_ema_saved_and_restored_exactly(tmp_path):
    from maskrcnn_benchmark.solver.ema import ModelEMA

    model, opt, sched = _setup(0)
    ema = ModelEMA(model, 0.7)
    for _ in range(2):
        _train_step(model, opt, sched)
        ema.update(model)
    path = Checkpointer(model, opt, sched, str(tmp_path), save_to_disk=True, ema=ema).save("m", iteration=2)
    saved = torch.load(path, weights_only=True)
    assert saved["ema"]["updates"] == 2 and saved["ema"]["decay"] == 0.7

    model2, opt2, sched2 = _setup(1)
    ema2 = ModelEMA(model2, 0.7)
    Checkpointer(model2, opt2, sched2, str(tmp_path), ema=ema2).resume()
    assert ema2.updates == 2
    for k, v in ema.model.state_dict().items():
        assert torch.equal(ema2.model.state_dict()[k], v), k
    # weights-only loading (MODEL.WEIGHT, test_net, the Predictor) takes the EMA weights
    model3 = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    Checkpointer(model3).load_weights(path)
    for k, v in ema.model.state_dict().items():
        assert torch.equal(model3.state_dict()[k], v), k
    assert not torch.equal(model3[0].weight, model[0].weight)


def test_nonfinite_weights_refused_naming_the_tensors(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.weight"][1, 2] = float("nan")
    state["1.bias"][0] = float("inf")
    path = tmp_path / "nan.pth"
    torch.save({"model": state}, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for kwargs in ({}, {"for_inference": True}):
        with pytest.raises(ValueError, match=r"nan\.pth: 2 tensor\(s\) hold NaN or inf \(0\.weight, 1\.bias\)"):
            Checkpointer(model).load_weights(str(path), **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded


def test_nonfinite_resume_refused(tmp_path):
    model = nn.Linear(3, 2)
    ck = Checkpointer(model, save_dir=str(tmp_path), save_to_disk=True)
    ck.save("model_0000001", iteration=1)
    data = torch.load(tmp_path / "model_0000001.pth", weights_only=True)
    data["model"]["bias"][1] = float("nan")
    torch.save(data, tmp_path / "model_0000001.pth")
    with pytest.raises(ValueError, match=r"checkpoint to resume in .*: 1 tensor\(s\) hold NaN or inf \(bias\)"):
        Checkpointer(nn.Linear(3, 2), save_dir=str(tmp_path)).resume()


def test_missing_tensors_error_for_inference_warning_for_training(tmp_path, caplog):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    partial = tmp_path / "partial.pth"
    torch.save({"0.weight": torch.ones(4, 3), "0.bias": torch.ones(4)}, partial)
    with pytest.raises(ValueError, match=r"partial\.pth: 2 of the model's tensors are not in it \(1\.bias, "
                                         r"1\.weight\); for inference every tensor must come from the weight file"):
        Checkpointer(model).load_weights(str(partial), for_inference=True)
    with caplog.at_level(logging.WARNING, logger="maskrcnn_benchmark.checkpoint"):
        Checkpointer(model).load_weights(str(partial))
    assert torch.equal(model[0].weight, torch.ones(4, 3))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("partial.pth: 2 model tensor(s) are not in it and keep their initialisation: 1.bias, 1.weight" in m
               for m in warned)


def _checkpoint_of(tmp_path, head: str, body: str = "R-18-FPN-RETINANET") -> str:
    """One of our checkpoints of ``nn.Linear(3, 2)`` whose stored config names ``head`` / ``body``."""
    from maskrcnn_benchmark.config import cfg as defaults

    saved = defaults.clone()
    saved.MODEL.HEAD, saved.MODEL.BACKBONE.CONV_BODY = head, body
    ck = Checkpointer(nn.Linear(3, 2), save_dir=str(tmp_path / head), save_to_disk=True)
    return ck.save("model_final", iteration=10, config=saved.dump())


def test_checkpoint_of_another_head_or_backbone_refused_with_both_names(tmp_path, caplog):
    from maskrcnn_benchmark.config import cfg as defaults
    from maskrcnn_benchmark.utils.checkpoint import model_identity

    path = _checkpoint_of(tmp_path, "FCOS")
    cfg = defaults.clone()
    cfg.MODEL.HEAD, cfg.MODEL.BACKBONE.CONV_BODY = "DYNAMIC_ATSS", "R-18-FPN-RETINANET"
    identity = model_identity(cfg)
    assert identity == {"MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "MODEL.HEAD": "DYNAMIC_ATSS",
                        "MODEL.BACKBONE.CONV_BODY": "R-18-FPN-RETINANET"}
    for kwargs in ({"for_inference": True}, {"min_match": 0.5}):
        with pytest.raises(ValueError, match=r"model_final\.pth was trained as another model \(MODEL\.HEAD: "
                                             r"checkpoint FCOS, config DYNAMIC_ATSS\)"):
            Checkpointer(nn.Linear(3, 2)).load_weights(path, identity=identity, **kwargs)
    with caplog.at_level(logging.WARNING, logger="maskrcnn_benchmark.checkpoint"):  # training, WEIGHT_MIN_MATCH 0
        Checkpointer(nn.Linear(3, 2)).load_weights(path, identity=identity, min_match=0)
    assert any("checkpoint FCOS, config DYNAMIC_ATSS" in r.getMessage() for r in caplog.records)
    cfg.MODEL.HEAD, cfg.MODEL.BACKBONE.CONV_BODY = "FCOS", "R-50-FPN-RETINANET"
    with pytest.raises(ValueError, match=r"MODEL\.BACKBONE\.CONV_BODY: checkpoint R-18-FPN-RETINANET, config "
                                         r"R-50-FPN-RETINANET"):
        Checkpointer(nn.Linear(3, 2)).load_weights(path, identity=model_identity(cfg), for_inference=True)
    cfg.MODEL.BACKBONE.CONV_BODY = "R-18-FPN-RETINANET"  # the same model: loads
    Checkpointer(nn.Linear(3, 2)).load_weights(path, identity=model_identity(cfg), for_inference=True)
