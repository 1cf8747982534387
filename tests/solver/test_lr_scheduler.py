"""WarmupMultiStepLR against hand-computed learning rates."""
import pytest
import torch

from maskrcnn_benchmark.solver import WarmupMultiStepLR


def _lrs(scheduler, optimizer, n):
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def _optimizer(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_constant_warmup_then_steps():
    opt = _optimizer(0.1)
    sched = WarmupMultiStepLR(opt, milestones=[4, 6], gamma=0.1, warmup_factor=1 / 3, warmup_iters=2,
                              warmup_method="constant")
    expected = [0.1 / 3, 0.1 / 3, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert _lrs(sched, opt, 8) == pytest.approx(expected)


def test_linear_warmup_then_steps():
    opt = _optimizer(0.01)
    sched = WarmupMultiStepLR(opt, milestones=[5], gamma=0.5, warmup_factor=0.001, warmup_iters=4,
                              warmup_method="linear")
    # factor = 0.001 * (1 - i/4) + i/4 for i < 4
    hand = [0.001, 0.001 * 0.75 + 0.25, 0.001 * 0.5 + 0.5, 0.001 * 0.25 + 0.75, 1.0, 0.5, 0.5]
    assert _lrs(sched, opt, 7) == pytest.approx([0.01 * f for f in hand])


def test_warmup_overlapping_step_multiplies():
    opt = _optimizer(1.0)
    sched = WarmupMultiStepLR(opt, milestones=[1], gamma=0.1, warmup_factor=0.5, warmup_iters=3,
                              warmup_method="constant")
    assert _lrs(sched, opt, 4) == pytest.approx([0.5, 0.05, 0.05, 0.1])


def test_per_group_base_lr_kept():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 0.1}, {"params": [p2], "lr": 0.2}], lr=0.1)
    sched = WarmupMultiStepLR(opt, [2], 0.1, warmup_factor=0.5, warmup_iters=1, warmup_method="constant")
    seen = []
    for _ in range(3):
        seen.extend(g["lr"] for g in opt.param_groups)
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.05, 0.1, 0.1, 0.2, 0.01, 0.02])


@pytest.mark.parametrize("steps", [(10, 5), (5, 5)])
def test_steps_must_increase(steps):
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(_optimizer(), steps)


def test_unknown_warmup_method():
    with pytest.raises(ValueError, match="warmup method"):
        WarmupMultiStepLR(_optimizer(), [5], warmup_method="cosine")


def test_state_dict_roundtrip_continues_schedule():
    opt = _optimizer(0.1)
    sched = WarmupMultiStepLR(opt, [3], 0.1, warmup_factor=0.2, warmup_iters=2, warmup_method="linear")
    _lrs(sched, opt, 2)
    opt2 = _optimizer(0.1)
    sched2 = WarmupMultiStepLR(opt2, [3], 0.1, warmup_factor=0.2, warmup_iters=2, warmup_method="linear")
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert _lrs(sched2, opt2, 3) == pytest.approx(_lrs(sched, opt, 3))


def test_resume_with_changed_schedule_follows_the_new_one():
    """load_state_dict takes only the position: the schedule (milestones, base lr) built from the config
    in force applies from the resume point, the saved one is ignored."""
    opt = _optimizer(0.1)
    old = WarmupMultiStepLR(opt, [8], 0.1, warmup_factor=0.5, warmup_iters=2, warmup_method="linear")
    assert _lrs(old, opt, 4) == pytest.approx([0.05, 0.075, 0.1, 0.1])
    state = old.state_dict()
    assert state["milestones"] == [8] and state["base_lrs"] == [0.1]

    opt2 = _optimizer(0.2)  # BASE_LR changed to 0.2 and STEPS to (5, 6)
    new = WarmupMultiStepLR(opt2, [5, 6], 0.1, warmup_factor=0.5, warmup_iters=2, warmup_method="linear")
    opt2.load_state_dict(opt.state_dict())  # the optimizer's saved lr (0.1) is overwritten below
    new.load_state_dict(state)
    assert new.last_epoch == 4 and new.milestones == [5, 6] and new.base_lrs == [0.2]
    # updates 5..8 (indices 4..7): 0.2 before 5, then x0.1 at 5 and again at 6
    assert _lrs(new, opt2, 4) == pytest.approx([0.2, 0.02, 0.002, 0.002])


def test_load_state_dict_needs_the_position():
    with pytest.raises(ValueError, match="last_epoch"):
        WarmupMultiStepLR(_optimizer(), [5]).load_state_dict({"milestones": [5]})
