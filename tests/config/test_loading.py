"""Config files from the command line: only yaml unless Python configs are allowed explicitly, yaml
syntax errors named by file and line, and the shared --config-file help of every tool."""
import os
import subprocess
import sys

import pytest

from maskrcnn_benchmark.config import setup_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = ["tools/train_net.py", "tools/test_net.py", "tools/visualize_detections.py", "tools/demo.py",
         "tools/benchmarks/bench_model.py"]


def _python_config(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "cfg.py"
    path.write_text("from yacs.config import CfgNode as CN\n"
                    f"open({str(marker)!r}, 'w').close()\n"
                    "cfg = CN()\ncfg.SOLVER = CN()\ncfg.SOLVER.MAX_ITER = 7\n")
    return path, marker


def test_python_config_refused_without_flag(tmp_path):
    path, marker = _python_config(tmp_path)
    with pytest.raises(ValueError, match=r"cfg\.py is a Python file.*--allow-python-config"):
        setup_cfg(str(path))
    assert not marker.exists()
    cfg = setup_cfg(str(path), allow_python=True)
    assert marker.exists() and cfg.SOLVER.MAX_ITER == 7


def test_other_extension_refused(tmp_path):
    path = tmp_path / "cfg.txt"
    path.write_text("SOLVER:\n  MAX_ITER: 3\n")
    with pytest.raises(ValueError, match=r"cfg\.txt must be a \.yaml or \.yml file"):
        setup_cfg(str(path))


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("SOLVER:\n  MAX_ITER: 3\n  BASE_LR: [0.1\nMODEL:\n  DEVICE: cpu\n")
    with pytest.raises(ValueError) as e:
        setup_cfg(str(path))
    msg = str(e.value)
    assert "bad.yaml" in msg and "invalid YAML at line" in msg
    line = int(msg.split("at line ")[1].split(",")[0])
    assert 3 <= line <= 5  # the unclosed list opened on line 3 is detected a line or two later


def test_train_net_rejects_python_config_with_usage_error(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tools_train_net", os.path.join(ROOT, "tools", "train_net.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    path, marker = _python_config(tmp_path)
    with pytest.raises(SystemExit) as e:
        tool.main(["--config-file", str(path)])
    assert e.value.code == 2 and "--allow-python-config" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("tool", TOOLS)
def test_help_of_every_tool_says_python_configs_need_the_flag(tool):
    out = subprocess.run([sys.executable, os.path.join(ROOT, tool), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "--allow-python-config" in text and ".py config file is Python code" in text


def test_config_differences_lists_changed_added_and_removed_leaves():
    from yacs.config import CfgNode

    from maskrcnn_benchmark.config import cfg as default_cfg
    from maskrcnn_benchmark.config import config_differences

    new = default_cfg.clone()
    new.SOLVER.STEPS = (5, 7)
    new.SOLVER.BASE_LR = 0.5
    assert config_differences(default_cfg.dump(), new) == [("SOLVER.BASE_LR", default_cfg.SOLVER.BASE_LR, 0.5),
                                                           ("SOLVER.STEPS", tuple(default_cfg.SOLVER.STEPS), (5, 7))]
    assert config_differences(default_cfg.dump(), default_cfg) == []  # yaml round trip is exact
    a = CfgNode({"A": CfgNode({"X": 1}), "B": 2})
    b = CfgNode({"A": CfgNode({"X": 1, "Y": [1, 2]})})
    assert config_differences(a, b) == [("A.Y", "<absent>", (1, 2)), ("B", 2, "<absent>")]


# The original releases' files, unchanged: both say ATSS_ON (no MODEL.HEAD); the ATSS release meant
# ATSS, the Dynamic ATSS release (rpn builder: `if ATSS_ON: return build_dynamic_atss(...)`) meant
# Dynamic ATSS. Its files were named configs/dynamic_atss/dynamic_atss_*.yaml.
ORIGINAL_YAML = ("MODEL:\n  META_ARCHITECTURE: \"GeneralizedRCNN\"\n  RPN_ONLY: True\n  ATSS_ON: True\n"
                 "  BACKBONE:\n    CONV_BODY: \"R-50-FPN-RETINANET\"\n  RESNETS:\n"
                 "    BACKBONE_OUT_CHANNELS: 256\n  RETINANET:\n    USE_C5: False\n  ATSS:\n"
                 "    ANCHOR_SIZES: (64, 128, 256, 512, 1024)\n    POSITIVE_TYPE: 'ATSS'\n    TOPK: 9\n"
                 "    FG_IOU_THRESHOLD: 0.5\n    BG_IOU_THRESHOLD: 0.4\n    OCTAVE: 2.0\n"
                 "SOLVER:\n  DCONV_OFFSETS_LR_FACTOR: 1.0\n")


@pytest.mark.parametrize("rel, head", [
    ("dynamic_atss/dynamic_atss_R_50_FPN_1x.yaml", "DYNAMIC_ATSS"),
    ("dynamic_atss/dynamic_atss_dcnv2_X_101_64x4d_FPN_2x.yaml", "DYNAMIC_ATSS"),
    ("mine/Dynamic-ATSS_R_50.yaml", "DYNAMIC_ATSS"),
    ("dynamic_atss/my_run.yaml", "DYNAMIC_ATSS"),  # the folder of the release's files
    ("atss/atss_R_50_FPN_1x.yaml", "ATSS"),
    ("atss/atss_dcnv2_R_101_FPN_2x.yaml", "ATSS"),
])
def test_atss_on_means_the_release_the_file_comes_from(tmp_path, caplog, rel, head):
    path = tmp_path / rel
    path.parent.mkdir(parents=True)
    path.write_text(ORIGINAL_YAML)
    with caplog.at_level("INFO", logger="maskrcnn_benchmark.config"):
        cfg = setup_cfg(str(path))
    assert cfg.MODEL.HEAD == head
    other = "ATSS" if head == "DYNAMIC_ATSS" else "DYNAMIC_ATSS"
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"MODEL.HEAD {head}" in msg and f"set MODEL.HEAD {other}" in msg and str(path) in msg
    from maskrcnn_benchmark.modeling.dense_heads import head_name
    assert head_name(cfg) == head


def test_explicit_head_wins_over_the_file_name(tmp_path, caplog):
    path = tmp_path / "dynamic_atss" / "dynamic_atss_R_50_FPN_1x.yaml"
    path.parent.mkdir()
    path.write_text(ORIGINAL_YAML)
    with caplog.at_level("INFO", logger="maskrcnn_benchmark.config"):
        cfg = setup_cfg(str(path), ["MODEL.HEAD", "ATSS"])
    assert cfg.MODEL.HEAD == "ATSS"
    assert not [r for r in caplog.records if "MODEL.HEAD" in r.getMessage()]
    # a file with HEAD set and a misleading name keeps its HEAD; other legacy flags are untouched
    (tmp_path / "dynamic_atss_fcos.yaml").write_text("MODEL:\n  FCOS_ON: True\n")
    assert setup_cfg(str(tmp_path / "dynamic_atss_fcos.yaml")).MODEL.HEAD == ""


@pytest.mark.parametrize("text, kind", [("- MODEL\n- SOLVER\n", "list"), ("just a string\n", "str"),
                                        ("42\n", "int")])
def test_yaml_top_level_not_a_mapping_names_the_file(tmp_path, text, kind):
    path = tmp_path / "listy.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"config file .*listy\.yaml: the top level must be a mapping.*got a {kind}"):
        setup_cfg(str(path))


def test_empty_yaml_changes_nothing(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert setup_cfg(str(path)).SOLVER.BASE_LR == setup_cfg().SOLVER.BASE_LR


@pytest.mark.parametrize("text, key", [("SOLVER:\n  BASE_LR: .nan\n", "SOLVER.BASE_LR"),
                                       ("SOLVER:\n  BASE_LR: -.inf\n", "SOLVER.BASE_LR"),
                                       ("MODEL:\n  RETINANET:\n    ASPECT_RATIOS: [0.5, .inf]\n",
                                        "MODEL.RETINANET.ASPECT_RATIOS")])
def test_non_finite_float_in_yaml_names_the_key(tmp_path, text, key):
    path = tmp_path / "nan.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"nan\.yaml.*non-finite value\(s\) for 1 key\(s\): {key} = "):
        setup_cfg(str(path))


def test_non_finite_float_override_names_the_key():
    with pytest.raises(ValueError, match=r"the overrides: non-finite value\(s\) for 1 key\(s\): SOLVER.BASE_LR = inf"):
        setup_cfg("", ["SOLVER.BASE_LR", "1e999"])


def test_config_errors_are_user_input_errors(tmp_path):
    from maskrcnn_benchmark.config.loading import ConfigError
    from maskrcnn_benchmark.utils.errors import is_user_input_error

    path = tmp_path / "listy.yaml"
    path.write_text("- MODEL\n")
    with pytest.raises(ConfigError) as info:
        setup_cfg(str(path))
    assert isinstance(info.value, ValueError) and is_user_input_error(info.value)


def test_selected_head_without_the_registry():
    from maskrcnn_benchmark.config import cfg as default_cfg
    from maskrcnn_benchmark.config.legacy import selected_head

    cfg = default_cfg.clone()
    cfg.MODEL.HEAD = ""
    cfg.MODEL.FCOS_ON = True
    assert selected_head(cfg) == "FCOS"
    cfg.MODEL.FCOS_ON = False
    with pytest.raises(ValueError, match=r"set MODEL.HEAD \(a registered dense head\)"):
        selected_head(cfg)
    with pytest.raises(ValueError, match=r"set MODEL.HEAD \(one of \['A', 'B'\]\)"):
        selected_head(cfg, ["A", "B"])
    cfg.MODEL.ATSS_ON = cfg.MODEL.RETINANET_ON = True
    with pytest.raises(ValueError, match=r"several legacy head flags are on \(\['ATSS', 'RETINANET'\]\)"):
        selected_head(cfg)


def test_config_package_imports_nothing_else_of_the_package():
    """config/ is the ground floor: setting up a config loads no model, data or utils module."""
    code = ("import sys, maskrcnn_benchmark.config, maskrcnn_benchmark.config.paths_catalog; "
            "print(sorted(m for m in sys.modules if m.startswith('maskrcnn_benchmark.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert all(m.startswith("maskrcnn_benchmark.config") for m in eval(out)), out
