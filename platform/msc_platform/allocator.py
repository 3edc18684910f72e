"""Keep glibc from returning large freed blocks to the kernel between training steps.

glibc serves an allocation above its mmap threshold (at most 32 MiB) with a fresh `mmap` and
unmaps it on free, so every large tensor of a step is faulted in page by page again: the
batched branches of MSC ([8, B, 128, 4D] activations) paid about 4 s of kernel time per step at
B=32 on one CPU thread, against 0.4 s with the settings below, which serve large blocks from the
heap and keep freed memory for the next step. The process's resident memory then stays at its
peak, which a training process reaches every step anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util

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
