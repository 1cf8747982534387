"""tools/benchmarks/bench_train_ab.py (variant parsing, the unfused-FrozenBN switch) and bench_conv.py."""
import importlib.util
from pathlib import Path

import pytest

from maskrcnn_benchmark.layers import batch_norm
from maskrcnn_benchmark.modeling.backbone import resnet

BENCH = Path(__file__).resolve().parents[2] / "tools" / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_train_ab = _load("bench_train_ab")
bench_conv = _load("bench_conv")


def test_parse_variant():
    assert bench_train_ab.parse_variant("default:") == ("default", [], "", False)
    name, opts, amp, unfused = bench_train_ab.parse_variant(
        "x:MODEL.CHANNELS_LAST=True,SOLVER.BASE_LR=0.5,amp=bf16,unfused_frozen_bn")
    assert name == "x" and opts == ["MODEL.CHANNELS_LAST", True, "SOLVER.BASE_LR", 0.5]
    assert amp == "bf16" and unfused is True


@pytest.mark.parametrize("text, match", [("nocolon", "expected NAME:ITEM"), (":a=1", "expected NAME:ITEM"),
                                         ("v:amp=fp8", "amp must be bf16"), ("v:what", "is not KEY=VALUE")])
def test_parse_variant_errors_name_the_problem(text, match):
    with pytest.raises(ValueError, match=match):
        bench_train_ab.parse_variant(text)


def test_split_repo():
    assert bench_train_ab.split_repo("main:repo=/a/b,amp=bf16") == ("main:amp=bf16", "/a/b")
    assert bench_train_ab.split_repo("x:K=1") == ("x:K=1", "")
    with pytest.raises(ValueError, match="more than one repo"):
        bench_train_ab.split_repo("x:repo=/a,repo=/b")


def test_repo_variant_times_steps_in_a_worker_importing_that_checkout(tmp_path):
    """A ``repo=`` variant runs in a worker process; each call returns the seconds of one step."""
    import argparse

    root = Path(__file__).resolve().parents[2]
    args = argparse.Namespace(config_file=str(root / "configs/fcos/fcos_R_18_FPN_synthetic.yaml"),
                              size=(64, 96), batch=1, threads=1, opts=[])
    step = bench_train_ab.worker_step(args, "w:", str(root))
    try:
        times = [step(), step()]
    finally:
        step.close()
    assert all(isinstance(t, float) and t > 0 for t in times)


def test_unfused_step_runs_and_restores_the_fused_conv_norm():
    """A tiny real training step with the unfused switch; afterwards the ResNet uses conv_norm again."""
    config = str(Path(__file__).resolve().parents[2] / "configs/dynamic_atss/dynamic_atss_R_18_FPN_synthetic.yaml")
    variant = bench_train_ab.parse_variant("u:unfused_frozen_bn,MODEL.BACKBONE.USE_GN=False")
    seen = []
    original = batch_norm.conv_norm

    step = bench_train_ab.make_step(config, [], variant, 1, (64, 96))
    # the step swaps the module-level function in and out; record what the blocks see during it
    real_forward = resnet.Stem.forward

    def spy(self, x):
        seen.append(resnet.conv_norm)
        return real_forward(self, x)
    resnet.Stem.forward = spy
    try:
        step()
    finally:
        resnet.Stem.forward = real_forward
    assert seen and seen[0] is not original  # the unfused variant ran bn(conv(x))
    assert resnet.conv_norm is original


@pytest.mark.parametrize("winograd", [False, True])
def test_bench_conv_reports_positive_throughput(winograd, monkeypatch):
    from maskrcnn_benchmark.layers import winograd as wino

    calls = []
    real = wino.winograd_conv2d
    monkeypatch.setattr(wino, "winograd_conv2d", lambda *a: calls.append(1) or real(*a))
    fwd, fwd_rate, fwd_bwd, fwd_bwd_rate = bench_conv.bench(8, 8, 8, channels_last=True, bf16=False, iters=1,
                                                            winograd=winograd)
    assert fwd > 0 and fwd_bwd > 0 and fwd_rate > 0 and fwd_bwd_rate > 0
    assert bool(calls) == winograd
