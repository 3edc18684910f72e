"""Dropout whose random mask is drawn from 32-bit integers (docs/model.md, The training step's own
costs).

`torch.nn.Dropout` on a CPU draws every keep decision with a scalar Bernoulli sampler, a
double-precision uniform per element, which costs several times the memory passes around it.
Here one 64-bit draw gives the keep decisions of two elements: each 32-bit half, read as a signed
integer u (uniform on [-2^31, 2^31)), keeps its element when u < round((1 - p) 2^32) - 2^31, so
P(keep) = 1 - p to within 2^-33. The kept elements are scaled by 1 / (1 - p), as nn.Dropout
does, and the backward pass multiplies by the same scaled mask. The bits come from torch's
global generator of the tensor's device, so a seed fixes the masks; plain tensor ops, the same
code on CPU and CUDA.

Under torch.compile the mask is torch's own dropout instead: the compiler draws it inside the
fused kernel from its own generator (so compiled masks never equal eager ones), and its
autograd tracing cannot follow the int64 -> int32 reinterpretation above.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HALF_RANGE = 2 ** 31


def keep_threshold(p: float) -> int:
    """The signed 32-bit threshold t: an element is kept when its random int32 u < t, so
    P(keep) = (t + 2^31) / 2^32 = round((1 - p) 2^32) / 2^32. Raises ValueError unless
    0 <= p <= 1."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    return round((1.0 - p) * 2 ** 32) - HALF_RANGE


def random_int32(shape: tuple, device: torch.device) -> torch.Tensor:
    """Uniform random int32 [shape], two per 64-bit draw of the device's global generator."""
    count = math.prod(shape)
    words = torch.empty((count + 1) // 2, dtype=torch.int64, device=device)
    words.random_(-2 ** 63, None)  # the full 64-bit range
    halves = words.view(torch.int32)
    return (halves if count % 2 == 0 else halves[:count]).view(shape)


def keep_scale(shape: tuple, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Dropout's multiplier [shape]: 1 / (1 - p) where an element is kept (probability 1 - p),
    0 where it is dropped. Raises ValueError unless 0 <= p < 1."""
    if p >= 1.0:
        raise ValueError(f"keep_scale: p must be < 1, got {p}")
    kept = random_int32(shape, device) < keep_threshold(p)
    return kept.to(dtype).mul_(1.0 / (1.0 - p))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero each element of x with probability p and scale the rest by 1 / (1 - p) when
    training; x itself otherwise or for p = 0, zeros for p = 1. Raises ValueError unless
    0 <= p <= 1."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    if torch.compiler.is_compiling():
        return F.dropout(x, p, training=True)
    return x * keep_scale(tuple(x.shape), p, x.dtype, x.device)


class Dropout(nn.Dropout):
    """`nn.Dropout(p)` with the mask of `dropout` above; identity in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout of x (any shape) in training mode, x itself in eval mode."""
        return dropout(x, self.p, self.training)
