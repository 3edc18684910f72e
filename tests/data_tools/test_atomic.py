"""Atomic writes: the target is replaced whole or not at all, and no temporary file is left."""
from __future__ import annotations

import json
import os

import pytest

from data_tools.atomic import (
    atomic_copy,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    parse_temp_name,
    temp_sibling,
)


def test_temp_sibling_is_hidden_beside_the_target_and_names_its_writer(tmp_path):
    target = tmp_path / "sub" / "last.pt"
    first, second = temp_sibling(target), temp_sibling(target)
    assert first.parent == target.parent and first != second
    assert first.name.startswith(".last.pt.tmp-")
    assert parse_temp_name(first.name) == ("last.pt", os.getpid())


@pytest.mark.parametrize("name", ["last.pt", ".last.pt", ".last.pt.tmp-12", ".x.tmp-1-XYZ12345",
                                  ".tmp-synthetic-123-deadbeef"])
def test_other_names_are_not_temporary(name):
    assert parse_temp_name(name) is None


def test_each_writer_replaces_the_target_and_creates_its_folder(tmp_path):
    assert atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert atomic_write_text(tmp_path / "t.txt", "héllo").read_text(encoding="utf-8") == "héllo"
    path = atomic_write_json(tmp_path / "j.json", {"when": object()}, default=lambda _: "x")
    assert json.loads(path.read_text()) == {"when": "x"}
    atomic_write_text(tmp_path / "t.txt", "second")
    assert atomic_copy(tmp_path / "t.txt", tmp_path / "copy.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "copy.txt", "j.json", "t.txt"]


def test_a_failing_writer_keeps_the_old_target_and_leaves_no_temporary(tmp_path):
    target = atomic_write_text(tmp_path / "state.json", "old")

    def half_then_crash(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt("killed mid-write")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash, durable=True)
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing", target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_durable_write_reaches_the_target(tmp_path):
    target = atomic_write(tmp_path / "x.bin", lambda tmp: tmp.write_bytes(b"abc"), durable=True)
    assert target.read_bytes() == b"abc"
