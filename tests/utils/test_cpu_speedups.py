"""MODEL.CHANNELS_LAST / MODEL.WINOGRAD "auto" (maskrcnn_benchmark/utils/cpu_speedups.py): the rule,
forced values, bad values; the config node that accepts "auto" and bools for both keys."""
import pytest
import torch

from maskrcnn_benchmark.config.node import CPU_SPEEDUP_KEYS, parse_auto_flag
from maskrcnn_benchmark.utils.cpu_speedups import resolve_cpu_speedup

KEYS = list(CPU_SPEEDUP_KEYS)


@pytest.mark.parametrize("key", KEYS)
def test_auto_on_for_eager_cpu_float32(key):
    on, why = resolve_cpu_speedup("auto", key, device_type="cpu")
    assert on is True
    assert why.startswith(f"{key} auto: on") and "CPU" in why and "float32" in why


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("context, words", [
    (dict(device_type="cuda"), "runs on cuda"),
    (dict(device_type="mps"), "runs on mps"),
    (dict(device_type="cpu", autocast=True), "mixed precision"),
    (dict(device_type="cpu", compiled=True), "torch.compile"),
    (dict(device_type="cpu", export=True), "export"),
    (dict(device_type="cpu", dtype=torch.float64), "torch.float64"),
    (dict(device_type="cuda", autocast=True, compiled=True), "runs on cuda"),
])
def test_auto_off_elsewhere(key, context, words):
    on, why = resolve_cpu_speedup("auto", key, **context)
    assert on is False
    assert why.startswith(f"{key} auto: off") and words in why


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("forced", [True, False, "True", "false", " FALSE "])
@pytest.mark.parametrize("context", [dict(device_type="cpu"), dict(device_type="cuda", autocast=True, compiled=True,
                                                                  export=True)])
def test_forced_values_win(key, forced, context):
    want = forced if isinstance(forced, bool) else forced.strip().lower() == "true"
    on, why = resolve_cpu_speedup(forced, key, **context)
    assert on is want
    assert why == f"{key} {want}: {'on' if want else 'off'} (set in the config)"


@pytest.mark.parametrize("bad", ["yes", "on", "", 1, 0, None, 1.0, ["auto"]])
def test_bad_value_names_the_key(bad):
    with pytest.raises(ValueError, match=r"MODEL\.WINOGRAD must be 'auto', True or False; got"):
        resolve_cpu_speedup(bad, "MODEL.WINOGRAD", device_type="cpu")
    with pytest.raises(ValueError, match=r"MODEL\.CHANNELS_LAST must be 'auto', True or False"):
        parse_auto_flag(bad, "MODEL.CHANNELS_LAST")


def test_parse_auto_flag_canonical_values():
    assert [parse_auto_flag(v, "K") for v in ("auto", "AUTO", " Auto", True, False, "true", "False")] == [
        "auto", "auto", "auto", True, False, True, False]


# ---- the config: defaults, yaml and command line --------------------------------------------------
def test_defaults_are_auto():
    from maskrcnn_benchmark.config import cfg

    assert cfg.MODEL.CHANNELS_LAST == "auto" and cfg.MODEL.WINOGRAD == "auto"


@pytest.mark.parametrize("value, want", [("True", True), ("False", False), ("auto", "auto"), ("'auto'", "auto"),
                                         ("true", True), ("FALSE", False), (True, True), (False, False)])
def test_command_line_values(value, want):
    from maskrcnn_benchmark.config import setup_cfg

    cfg = setup_cfg("", ["MODEL.CHANNELS_LAST", value, "MODEL.WINOGRAD", value, "SOLVER.BASE_LR", "0.5"])
    assert cfg.MODEL.CHANNELS_LAST == want and cfg.MODEL.WINOGRAD == want
    assert cfg.SOLVER.BASE_LR == 0.5  # the other keys still merge


def test_yaml_then_command_line_switch_types(tmp_path):
    """A yaml bool overridden by "auto" on the command line and the other way round (plain yacs
    refuses both: bool vs str)."""
    from maskrcnn_benchmark.config import setup_cfg

    path = tmp_path / "c.yaml"
    path.write_text("MODEL:\n  CHANNELS_LAST: True\n  WINOGRAD: auto\n  DEVICE: cpu\n")
    cfg = setup_cfg(str(path), [])
    assert (cfg.MODEL.CHANNELS_LAST, cfg.MODEL.WINOGRAD, cfg.MODEL.DEVICE) == (True, "auto", "cpu")
    cfg = setup_cfg(str(path), ["MODEL.CHANNELS_LAST", "auto", "MODEL.WINOGRAD", "False"])
    assert (cfg.MODEL.CHANNELS_LAST, cfg.MODEL.WINOGRAD) == ("auto", False)
    path.write_text("MODEL:\n  WINOGRAD: \"True\"\n")
    assert setup_cfg(str(path), []).MODEL.WINOGRAD is True


def test_bad_value_in_yaml_or_command_line_names_the_key(tmp_path):
    from maskrcnn_benchmark.config import setup_cfg

    with pytest.raises(ValueError, match=r"MODEL\.WINOGRAD must be 'auto', True or False; got 'yes'"):
        setup_cfg("", ["MODEL.WINOGRAD", "yes"])
    path = tmp_path / "c.yaml"
    path.write_text("MODEL:\n  CHANNELS_LAST: 1\n")
    with pytest.raises(ValueError, match=r"MODEL\.CHANNELS_LAST must be 'auto', True or False; got 1"):
        setup_cfg(str(path), [])


def test_other_type_checks_unchanged():
    """Only the two keys are relaxed: yacs still refuses a str for a bool key."""
    from maskrcnn_benchmark.config import setup_cfg

    with pytest.raises(ValueError, match="Type mismatch"):
        setup_cfg("", ["MODEL.COMPILE", "'auto'"])
    with pytest.raises(KeyError):
        setup_cfg("", ["MODEL.CHANNELS_LASTT", "True"])


def test_dump_and_reload_round_trip():
    """A saved config.yml (OUTPUT_DIR) merges back with the resolved-or-auto values."""
    from maskrcnn_benchmark.config import cfg as default
    from maskrcnn_benchmark.config import setup_cfg

    for value in ("auto", True, False):
        cfg = setup_cfg("", ["MODEL.CHANNELS_LAST", value])
        again = default.clone()
        again.merge_from_other_cfg(type(default).load_cfg(cfg.dump()))
        assert again.MODEL.CHANNELS_LAST == value and again.MODEL.WINOGRAD == "auto"
