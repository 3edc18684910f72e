"""Checkpoint files are written atomically and read back with clear errors; RNG state round trip."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from msc_platform.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from msc_platform.run.runtime import capture_rng_state, restore_rng_state, seed_everything

KEYS = ("model", "config")


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "config": {"train": {"lr": 1e-3}}}
    path = save_checkpoint(state, tmp_path / "sub" / "last.pt")
    loaded = load_checkpoint(path, required=KEYS)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["config"] == state["config"]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = save_checkpoint({"model": 1, "config": "old"}, tmp_path / "last.pt")
    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint({"model": Unpicklable(), "config": "new"}, path)
    assert load_checkpoint(path, required=KEYS)["config"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(tmp_path):
    path = save_checkpoint({"model": torch.zeros(1000), "config": {}}, tmp_path / "last.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"last\.pt: cannot read checkpoint"):
        load_checkpoint(path)


def test_missing_keys_are_listed(tmp_path):
    path = save_checkpoint({"model": {}}, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match=r"best\.pt: checkpoint lacks keys \['config'\]"):
        load_checkpoint(path, required=KEYS)
    path = save_checkpoint([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a checkpoint dict, got list"):
        load_checkpoint(path)


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    seed_everything(123)
    _draws()
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = _draws()
    seed_everything(999)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt", required=("rng",))["rng"])
    assert _draws() == expected
