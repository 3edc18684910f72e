"""Checkpoint files: written atomically (data_tools.atomic), read with clear errors.

A training checkpoint is a dict with the keys in REQUIRED_KEYS: model and optimiser state,
schedule state (its step), the epoch just finished (0-based), the best val SumR so far and its
epoch, the epochs without improvement, the resolved config (nested dict), all RNG states, the
MLflow run id (or None) and the per-epoch history of logged metrics.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from data_tools.atomic import atomic_write

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "best_sumr", "best_epoch",
                 "bad_epochs", "config", "rng", "run_id", "history")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or lacks required keys."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `state` to `path` through a temporary file in the same folder, flushed to disk,
    then os.replace.

    A crash mid-write leaves the previous file intact. Returns the final path; re-raises what
    torch.save raises (an unpicklable value) after removing the temporary file.
    """
    return atomic_write(path, lambda tmp: torch.save(state, tmp), durable=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = REQUIRED_KEYS) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint.

    Raises CheckpointError naming the file when it is missing, unreadable, not a dict, or
    lacks any of `required`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: cannot read checkpoint: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(state).__name__}")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks keys {missing}")
    return state
