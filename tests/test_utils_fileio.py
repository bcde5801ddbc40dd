"""Atomic writes keep the old file on failure; read_json names the file it could not read."""

from __future__ import annotations

import json

import pytest

from omniloom.utils.fileio import atomic_path, atomic_write_json, atomic_write_text, read_json


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "sub" / "report.json"
    atomic_write_json(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1} and p.read_text().endswith("\n")
    atomic_write_text(p, "{}")
    assert p.read_text() == "{}"
    assert sorted(x.name for x in p.parent.iterdir()) == ["report.json"]


def test_a_failing_writer_leaves_the_old_file_whole(tmp_path):
    p = tmp_path / "weights.bin"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(p) as tmp:
            assert tmp.parent == p.parent and tmp.suffix == ".bin" and tmp != p
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["weights.bin"]


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"model config .*config.json is missing"):
        read_json(tmp_path / "config.json", "model config")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON"):
        read_json(bad)
    bad.write_text('{"x": [1, 2]}')
    assert read_json(bad) == {"x": [1, 2]}
