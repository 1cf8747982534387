"""The OUTPUT_DIR lock: a second run stops naming the holder, a dead holder's lock is taken over,
the lock goes at exit, and stale temp files of interrupted atomic writes are removed on start."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from maskrcnn_benchmark.utils.run_lock import LOCK_NAME, OutputDirLock, OutputDirLockedError, training_lock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_second_lock_refused_naming_pid_and_host(tmp_path):
    with OutputDirLock(str(tmp_path)):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(OutputDirLockedError) as e:
            OutputDirLock(str(tmp_path)).acquire()
        assert f"pid {os.getpid()}" in str(e.value) and socket.gethostname() in str(e.value)
    assert not (tmp_path / LOCK_NAME).exists()  # released at exit
    with OutputDirLock(str(tmp_path)):  # free again
        pass


def test_lock_held_by_another_process(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from maskrcnn_benchmark.utils.run_lock import OutputDirLock
        lock = OutputDirLock({str(tmp_path)!r}); lock.acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirLockedError, match=f"pid {proc.pid} on host"):
            OutputDirLock(str(tmp_path)).acquire()
    finally:
        proc.kill()
        proc.wait()
    # the holder was killed (no clean release): its lock file is stale and taken over
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == proc.pid
    lock = OutputDirLock(str(tmp_path))
    lock.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_stale_lock_taken_over_with_warning(tmp_path, caplog):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999999999, "host": socket.gethostname(),
                                                  "started": "2020-01-01T00:00:00"}))
    with caplog.at_level("WARNING", logger="maskrcnn_benchmark.run_lock"):
        with training_lock(str(tmp_path)):
            pass
    assert "stale lock" in caplog.text and "pid 999999999" in caplog.text


def test_training_lock_removes_interrupted_temp_files(tmp_path, caplog):
    (tmp_path / "inference" / "val").mkdir(parents=True)
    stale = [tmp_path / ".model_0000002.pth.k2j4_a.tmp", tmp_path / ".last_checkpoint.zz9.tmp",
             tmp_path / "inference" / "val" / ".bbox.json.q8r.tmp"]
    kept = [tmp_path / "model_0000002.pth", tmp_path / "notes.tmp", tmp_path / ".hidden",
            tmp_path / "inference" / "val" / "bbox.json"]
    for p in stale + kept:
        p.write_bytes(b"x")
    with caplog.at_level("WARNING", logger="maskrcnn_benchmark.run_lock"):
        with training_lock(str(tmp_path)):
            assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert "Removed 3 temporary file(s)" in caplog.text


def test_training_lock_held_keeps_temp_files_of_the_holder(tmp_path):
    with OutputDirLock(str(tmp_path)):
        tmp = tmp_path / ".model_0000004.pth.abc.tmp"
        tmp.write_bytes(b"being written")
        with pytest.raises(OutputDirLockedError):
            with training_lock(str(tmp_path)):
                pass
        assert tmp.exists()
