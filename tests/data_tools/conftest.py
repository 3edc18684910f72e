"""Fixtures of the data_tools tests: a tiny synthetic collection, and fresh copies to break."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_tools.layout import Collection
from data_tools.synth import synthesize


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A read-only-by-convention root with collection `synthetic` (preset tiny, seed 0)."""
    root = tmp_path_factory.mktemp("tiny")
    synthesize(root, "synthetic", "tiny", seed=0)
    return root


@pytest.fixture
def tiny_copy(tiny_root, tmp_path) -> Collection:
    """A private copy of the tiny collection that a test may modify."""
    shutil.copytree(tiny_root / "synthetic", tmp_path / "synthetic")
    return Collection(tmp_path, "synthetic")
