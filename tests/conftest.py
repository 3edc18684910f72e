"""Shared pytest setup: CUDA tests skip cleanly without a GPU; the released schedule stand-in."""
from __future__ import annotations

import sys
import types

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def released_schedule(monkeypatch):
    """An object of the released optimiser's schedule class, as its best.ckpt pickles one."""
    module = types.ModuleType("Opts.optimization")
    module.WarmupLinearSchedule = type("WarmupLinearSchedule", (), {"__module__": module.__name__})
    monkeypatch.setitem(sys.modules, "Opts", types.ModuleType("Opts"))
    monkeypatch.setitem(sys.modules, "Opts.optimization", module)
    schedule = module.WarmupLinearSchedule()
    schedule.warmup, schedule.t_total = 0.01, 1000.0
    return schedule
