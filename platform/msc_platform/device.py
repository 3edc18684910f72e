"""Device choice and moving batches onto it."""
from __future__ import annotations

import torch

from msc_platform.config import ConfigError


def pick_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; raises ConfigError for CUDA without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for but no CUDA device is available")
    return torch.device(name)


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch with every tensor moved to `device` (lists of ids untouched)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def apply_threads(count: int) -> None:
    """Set torch's CPU thread count for this process (0 keeps the current setting)."""
    if count:
        torch.set_num_threads(count)
