import json
import os

import pytest
import torch

from maskrcnn_benchmark.utils.io import (atomic_open, atomic_torch_save, atomic_write_bytes,
                                         atomic_write_json, atomic_write_text)


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
