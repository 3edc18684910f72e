"""The devices a bench section measures on, draining a device before reading a clock, and
handing freed host memory back between large steps."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc

import torch


def bench_devices() -> list[tuple[torch.device, str, str]]:
    """(device, row-name suffix, description): the CPU, and the GPU when CUDA is available
    (suffix `_cuda`, the card named in the description)."""
    devices = [(torch.device("cpu"), "", "CPU")]
    if torch.cuda.is_available():
        devices.append((torch.device("cuda"), "_cuda", f"CUDA {torch.cuda.get_device_name(0)}"))
    return devices


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_host_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc `malloc_trim`; a no-op
    elsewhere). Between multi-GiB steps the C allocator keeps freed pages, so two large steps in
    one process would otherwise hold both peaks."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None)
    if trim is not None:
        trim(0)
