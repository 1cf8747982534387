"""Config files from the command line: only yaml unless Python configs are allowed explicitly, yaml
syntax errors named by file and line, and the shared --config-file help of every tool."""
import os
import subprocess
import sys

import pytest

from maskrcnn_benchmark.utils.miscellaneous import setup_cfg

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
    from maskrcnn_benchmark.utils.miscellaneous import config_differences

    new = default_cfg.clone()
    new.SOLVER.STEPS = (5, 7)
    new.SOLVER.BASE_LR = 0.5
    assert config_differences(default_cfg.dump(), new) == [("SOLVER.BASE_LR", default_cfg.SOLVER.BASE_LR, 0.5),
                                                           ("SOLVER.STEPS", tuple(default_cfg.SOLVER.STEPS), (5, 7))]
    assert config_differences(default_cfg.dump(), default_cfg) == []  # yaml round trip is exact
    a = CfgNode({"A": CfgNode({"X": 1}), "B": 2})
    b = CfgNode({"A": CfgNode({"X": 1, "Y": [1, 2]})})
    assert config_differences(a, b) == [("A.Y", "<absent>", (1, 2)), ("B", 2, "<absent>")]
