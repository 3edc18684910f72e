"""The devices a bench section measures on, and draining a device before reading a clock."""
from __future__ import annotations

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
