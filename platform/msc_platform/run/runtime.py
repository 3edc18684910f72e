"""The process a run executes in: device, CPU threads, seeds and RNG state, bf16 autocast, and
the allocator setting of the training loop.

Seeding: DataLoader workers need nothing more than `seed_everything`: torch seeds each worker's
torch, random and numpy from the (seeded) global torch RNG, and the training shuffle depends only
on (train.seed, epoch).

Allocator (`keep_freed_memory`): keep glibc from returning large freed blocks to the kernel
between training steps.

glibc serves an allocation above its mmap threshold (at most 32 MiB) with a fresh `mmap` and
unmaps it on free, so every large tensor of a step is faulted in page by page again: the
batched branches of MSC ([8, B, 128, 4D] activations) paid about 4 s of kernel time per step at
B=32 on one CPU thread, against 0.4 s with the settings below, which serve large blocks from the
heap and keep freed memory for the next step. The process's resident memory then stays at its
peak, which a training process reaches every step anyway.

Training outside the main thread (a Ray Tune trial runs its function in a thread of its worker)
needs one more setting, in the environment the process starts with (`training_thread_env`):
glibc gives such a thread an arena of its own, whose heaps hold at most 64 MiB, so larger blocks
are mapped and unmapped every time whatever `keep_freed_memory` set. A small-preset trial took
22.8 s in a thread, 5.5 s of it in the kernel (4.4 M page faults), against 17.9 s with 0.4 s in
the kernel (0.3 M) in the main thread. With MALLOC_ARENA_MAX=1 every thread allocates from the
main heap, and a trial in a thread costs what it costs in the main thread. glibc reads that
variable when the process starts, so it cannot be set from inside the process.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import random
from typing import Any

import numpy as np
import torch

from msc_platform.run.config import ConfigError


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


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on `device` (CUDA or CPU) when asked, otherwise a no-op context."""
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch (all devices); switch deterministic kernels on or off."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(False)


def capture_rng_state() -> dict[str, Any]:
    """The current state of every RNG (Python, numpy, torch CPU and CUDA)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved by capture_rng_state (CUDA only when both have it)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # allocations above 1 GiB still get their own mapping
TRIM_THRESHOLD = (1 << 31) - 1  # never trim the heap's top (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Apply the settings above to this process; True when glibc accepted them, False on a C
    library without mallopt (macOS, musl) or when it refused. Raises nothing."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


ARENA_MAX_ENV = "MALLOC_ARENA_MAX"


def training_thread_env() -> dict[str, str]:
    """Environment variables for a process that will train outside its main thread (see the
    module docstring): one malloc arena, unless this process's environment already sets the
    count. Raises nothing."""
    return {ARENA_MAX_ENV: os.environ.get(ARENA_MAX_ENV, "1")}
