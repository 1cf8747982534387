"""Every tool ends user-input errors with status 2 and one message (traceback only with --debug or
MASKRCNN_DEBUG=1); internal errors keep their traceback; a run refused by the OUTPUT_DIR lock
writes nothing into the folder."""
import ast
import glob
import os
import subprocess
import sys

import pytest

from maskrcnn_benchmark.utils.errors import DEBUG_ENV, EXIT_USER_ERROR, UserInputError, run_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_CONFIG = os.path.join(ROOT, "configs", "atss", "atss_R_18_FPN_small.yaml")


def _tools_with_main():
    for path in sorted(glob.glob(os.path.join(ROOT, "tools", "*.py"))):
        tree = ast.parse(open(path, encoding="utf-8").read())
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            yield path


@pytest.mark.parametrize("path", list(_tools_with_main()), ids=os.path.basename)
def test_every_tool_main_runs_through_run_tool(path):
    """The ``if __name__ == "__main__"`` block of every tool with a ``main`` calls ``run_tool(main)``."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    blocks = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert len(blocks) == 1
    calls = [ast.unparse(n) for n in ast.walk(blocks[0]) if isinstance(n, ast.Call)]
    assert any(c.startswith("run_tool(main") for c in calls), calls


def _main_raising(exc):
    def main(argv):
        main.argv = argv
        raise exc
    return main


def test_user_error_exits_2_with_one_message(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    for exc in (UserInputError("config file x.yaml: bad"), FileNotFoundError("weight file w.pth not found"),
                OSError(28, "No space left on device: /out/model_final.pth")):
        with pytest.raises(SystemExit) as e:
            run_tool(_main_raising(exc), ["--config-file", "x.yaml"], prog="tool.py")
        assert e.value.code == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert err.startswith(f"tool.py: error: {type(exc).__name__}: {exc}\n") and "Traceback" not in err
        assert "--debug" in err and DEBUG_ENV in err


def test_debug_flag_or_env_shows_the_exception(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    main = _main_raising(UserInputError("bad"))
    with pytest.raises(UserInputError):
        run_tool(main, ["--debug", "A", "1"])
    assert main.argv == ["A", "1"]  # --debug is the wrapper's, not the tool's
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(UserInputError):
        run_tool(main, [])


@pytest.mark.parametrize("exc", [RuntimeError("internal"), AttributeError("x"), KeyError("k"),
                                 FloatingPointError("Loss became non-finite")])
def test_internal_errors_keep_their_traceback(exc, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(type(exc)):
        run_tool(_main_raising(exc), [])


def _run(tool, *args, env=None):
    full_env = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    full_env.update(PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), *args], capture_output=True,
                          text=True, env=full_env, timeout=300)


def test_test_net_missing_weight_file_exits_2_without_traceback(tmp_path):
    args = ["--config-file", SMALL_CONFIG, "MODEL.DEVICE", "cpu", "MODEL.ATSS.NUM_CLASSES", "3",
            "MODEL.WEIGHT", str(tmp_path / "nope.pth"), "OUTPUT_DIR", str(tmp_path / "out")]
    proc = _run("test_net.py", *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "test_net.py: error: FileNotFoundError: MODEL.WEIGHT: weight file not found" in proc.stderr
    assert "nope.pth" in proc.stderr
    debug = _run("test_net.py", *args, env={DEBUG_ENV: "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "nope.pth" in debug.stderr


def test_train_net_config_not_a_mapping_exits_2(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- MODEL\n- SOLVER\n")
    proc = _run("train_net.py", "--config-file", str(bad), "OUTPUT_DIR", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "list.yaml: the top level must be a mapping" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_refused_second_run_writes_nothing_into_output_dir(tmp_path):
    """A run refused by the OUTPUT_DIR lock exits 2 naming the holder and leaves the first run's log.txt
    as it was (no start-up lines appended)."""
    from maskrcnn_benchmark.utils.run_lock import OutputDirLock

    out = tmp_path / "out"
    out.mkdir()
    (out / "log.txt").write_text("first run\n")
    with OutputDirLock(str(out)):  # the first run, alive
        proc = _run("train_net.py", "--config-file", SMALL_CONFIG, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "is in use by another training run" in proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr
    assert (out / "log.txt").read_text() == "first run\n"
    assert sorted(os.listdir(out)) == ["log.txt"]
