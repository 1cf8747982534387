import json
import os

import numpy as np
import pytest
import torch

from maskrcnn_benchmark.utils.io import (atomic_open, atomic_torch_save, atomic_write_bytes,
                                         atomic_write_json, atomic_write_text, read_json)


def _leftovers(folder):
    return [n for n in os.listdir(folder) if n.endswith(".tmp")]


def test_write_helpers_roundtrip(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "héllo")
    atomic_write_json(tmp_path / "sub" / "c.json", {"x": [1, 2]})
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "d.pth")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "sub" / "c.json").read_text()) == {"x": [1, 2]}
    assert torch.equal(torch.load(tmp_path / "d.pth")["w"], torch.arange(3))
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_failure_keeps_old_content_and_cleans_up(tmp_path):
    target = tmp_path / "ckpt.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(target, "w") as f:
            f.write("half-written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_replace_existing_and_reject_read_mode(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "1")
    atomic_write_text(target, "2")
    assert target.read_text() == "2"
    with pytest.raises(ValueError, match="write modes"):
        with atomic_open(target, "r"):
            pass


def test_disk_full_error_names_the_path(tmp_path):
    """ENOSPC raised by a write (no file name in it) comes back naming the destination; the old content
    and no temp file remain."""
    import errno

    from maskrcnn_benchmark.utils.metrics_io import MetricsWriter

    target = tmp_path / "bbox.json"
    target.write_text("old")

    def full(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as e:
        atomic_torch_save({"x": 1}, str(target), save_fn=full)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert str(target) in str(e.value) and "No space left on device" in str(e.value)
    assert target.read_text() == "old" and _leftovers(tmp_path) == []

    writer = MetricsWriter(str(tmp_path / "metrics.jsonl"))

    class FullFile:
        closed = False

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    writer._file = FullFile()
    with pytest.raises(OSError, match=r"No space left on device while writing: .*metrics\.jsonl"):
        writer.write(1, loss=0.5)


def test_file_size_limit_errors_name_the_path(tmp_path):
    """Under ``ulimit -f`` (RLIMIT_FSIZE; Python ignores SIGXFSZ, so writes fail with EFBIG) the checkpoint,
    json and metrics writers raise errors naming their file (torch.save alone says 'unexpected pos')."""
    import subprocess
    import sys
    import textwrap

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {root!r})
        import torch
        from torch import nn
        from maskrcnn_benchmark.utils.checkpoint import Checkpointer
        from maskrcnn_benchmark.utils.io import atomic_write_json
        from maskrcnn_benchmark.utils.metrics_io import MetricsWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        out = {str(tmp_path)!r}
        writer = MetricsWriter(out + "/metrics.jsonl")
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
        jobs = [lambda: Checkpointer(nn.Linear(100, 100), save_dir=out, save_to_disk=True).save("model_final"),
                lambda: atomic_write_json(out + "/bbox.json", list(range(10000))),
                lambda: [writer.write(i, loss=0.5, note="x" * 100) for i in range(1000)]]
        for job in jobs:
            try:
                job()
                print("no error")
            except OSError as e:
                print(e.errno, e.filename)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[:3] == [f"27 {tmp_path / name}" for name in ("model_final.pth", "bbox.json", "metrics.jsonl")]


@pytest.mark.parametrize("have_orjson", [True, False])
def test_atomic_write_json_fast_writes_the_same_values(tmp_path, monkeypatch, have_orjson):
    import builtins

    if have_orjson:
        pytest.importorskip("orjson")
    else:
        real_import = builtins.__import__

        def no_orjson(name, *args, **kwargs):
            if name == "orjson":
                raise ImportError("No module named 'orjson'")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_orjson)
    # full-precision float32 values (as double), ints, nested lists, a non-ASCII name
    obj = [{"image_id": 7, "category_id": 3, "bbox": [0.1, 1e-7, 123.456789012345, 2.0 ** 40],
            "score": float(np.float32(0.123456789)), "name": "caf\u00e9"}] * 3
    atomic_write_json(tmp_path / "fast.json", obj, fast=True)
    atomic_write_json(tmp_path / "slow.json", obj, indent=2)
    fast, slow = (json.loads((tmp_path / n).read_text(encoding="utf-8")) for n in ("fast.json", "slow.json"))
    assert fast == slow == obj
    assert "\n  " in (tmp_path / "slow.json").read_text()  # dump kwargs still reach json
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("text", [
    '{"a": [1, 2.5, -3e-7, 123456789012], "b": "caf\u00e9", "c": null, "d": true}',
    '{"big": 123456789012345678901234567890}',  # beyond 64 bits: orjson refuses, json reads it
    '{"x": NaN, "y": [Infinity, -Infinity]}',  # json's literals, refused by orjson
    '[{"dup": 1, "dup": 2}]',
])
def test_read_json_gives_json_loads_value(tmp_path, text):
    """With or without orjson, read_json returns json.loads' value, also where orjson refuses."""
    path = tmp_path / "a.json"
    path.write_text(text, encoding="utf-8")
    got, want = read_json(path), json.loads(text)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


@pytest.mark.parametrize("data, error", [
    (b'{"a": [1, 2,\n "b"}', json.JSONDecodeError),
    (b'{"a": "\xff\xfe"}', UnicodeDecodeError),
])
def test_read_json_errors_are_jsons(tmp_path, data, error):
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    with pytest.raises(error) as got:
        read_json(path)
    if error is json.JSONDecodeError:
        with pytest.raises(json.JSONDecodeError) as want:
            json.loads(data.decode())
        assert (got.value.msg, got.value.lineno, got.value.colno) == (want.value.msg, want.value.lineno,
                                                                      want.value.colno)
