"""Token merging ops of MSC (spec sections 1.1, 1.3, 4.3), batched and compile-friendly.

Every op here works on a whole batch with tensor operations only: no Python loop over videos,
tokens or pairs, no host reads, no data-dependent Python branching. The only Python loops run
over a constant number of levels or matching rounds, so the number of kernels does not grow with
the batch and `torch.compile(fullgraph=True)` accepts the ops.

Variable token counts (loss-side merging, section 4.3) keep a static length N: the valid tokens
of a video come first, in order, and padding tokens with size 0 follow. The valid count of a
video is the number of sizes > 0; padding tokens hold zeros.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SEGMENT_COUNTS = (5, 8, 12, 20, 32)
RATIO_STEPS = ((0.8, 5), (0.6, 8), (0.4, 12), (0.2, 20))
OPTOME_TARGETS = (80, 52, 32)


def l2_normalize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Return `x / (||x|| + eps)` along the last dimension (the spec's normalisation)."""
    return x / (x.norm(dim=-1, keepdim=True) + eps)


def _require(condition: bool, message: str) -> None:
    """Raise ValueError with `message` when a shape check fails."""
    if not condition:
        raise ValueError(message)


def fixed_length(frames: torch.Tensor, length: int = 128) -> torch.Tensor:
    """Resample `frames[n, D]` to `[length, D]` by averaging between rounded boundaries (spec 1.1).

    Boundaries are `b_i = round(i * n / length)` clamped to `n - 1`; row i is the mean of
    `frames[b_i:b_{i+1}]` when that range is non-empty, else `frames[b_i]`.
    Raises ValueError for a tensor that is not 2-D, an empty sequence or a length below 1.
    """
    _require(frames.dim() == 2, f"fixed_length: frames must be [n, D], got shape {tuple(frames.shape)}")
    _require(frames.shape[0] > 0, "fixed_length: frames is an empty sequence (n = 0)")
    _require(length >= 1, f"fixed_length: length must be >= 1, got {length}")
    n = frames.shape[0]
    steps = torch.arange(length + 1, dtype=torch.float64, device=frames.device)
    bounds = torch.round(steps * n / length).long().clamp(max=n - 1)  # [length + 1]
    start, stop = bounds[:-1], bounds[1:]  # [length]
    prefix = F.pad(frames.double().cumsum(0), (0, 0, 1, 0))  # [n + 1, D]
    span = (stop - start).clamp(min=1).unsqueeze(1).double()  # [length, 1]
    means = (prefix[stop] - prefix[start]) / span  # [length, D]
    rows = torch.where((stop > start).unsqueeze(1), means, frames[start].double())
    return rows.to(frames.dtype)


def uniform_clips(x: torch.Tensor, count: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clip tokens of the "uniform clips" ablation: means of `N // count` consecutive frames.

    `x[B, N, D]` -> `(tokens[B, count, D], sizes[B, count], labels[B, N])`, sizes all
    `N // count`, `labels[f] = f // (N // count)`. Raises ValueError when x is not 3-D or
    N is not a multiple of `count`.
    """
    _require(x.dim() == 3, f"uniform_clips: x must be [B, N, D], got shape {tuple(x.shape)}")
    batch, length, dim = x.shape
    _require(count >= 1 and length % count == 0,
             f"uniform_clips: N={length} frames is not a multiple of count={count}")
    group = length // count
    tokens = x.reshape(batch, count, group, dim).mean(dim=2)  # [B, count, D]
    sizes = torch.full((batch, count), float(group), dtype=x.dtype, device=x.device)
    labels = (torch.arange(length, device=x.device) // group).expand(batch, length).clone()
    return tokens, sizes, labels


def _pair_merge_level(x: torch.Tensor, sizes: torch.Tensor, labels: torch.Tensor, target: int):
    """One OP-ToMe level: merge the `N - target` neighbour pairs with the highest dot product.

    Pairs are (2p, 2p+1); ties go to the lower pair index (stable sort). Returns the new
    `(x[B, target, D], sizes[B, target], labels[B, F])`.
    """
    batch, length, _ = x.shape
    pairs = length // 2
    left, right = x[:, 0::2], x[:, 1::2]  # [B, P, D]
    scores = (left * right).sum(dim=-1)  # [B, P]
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # [B, P]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pairs, device=x.device).expand(batch, pairs))
    merged = rank < (length - target)  # [B, P]
    width = 2 - merged.long()  # tokens each pair leaves, [B, P]
    start = width.cumsum(dim=1) - width  # first new index of each pair, [B, P]
    odd = torch.tensor([0, 1], device=x.device)
    new_index = start.unsqueeze(2) + odd * (~merged).long().unsqueeze(2)  # [B, P, 2]
    new_index = new_index.reshape(batch, length)  # [B, N]
    weighted = x * sizes.unsqueeze(-1)  # [B, N, D]
    sums = x.new_zeros(batch, target, x.shape[2]).scatter_add_(
        1, new_index.unsqueeze(-1).expand_as(weighted), weighted)  # [B, T, D]
    new_sizes = sizes.new_zeros(batch, target).scatter_add_(1, new_index, sizes)  # [B, T]
    return sums / new_sizes.unsqueeze(-1), new_sizes, new_index.gather(1, labels)


def order_preserving_merge(x: torch.Tensor, targets: tuple[int, ...] = OPTOME_TARGETS):
    """Order-preserving token merging of spec 1.3 on un-normalised fixed frames.

    `x[B, N, D]` -> `(tokens[B, targets[-1], D], sizes[B, targets[-1]], labels[B, N])`,
    tokens un-normalised, sizes summing to N, labels non-decreasing. Raises ValueError for a
    non-3-D input or targets that do not decrease by at most half an even token count.
    """
    _require(x.dim() == 3, f"order_preserving_merge: x must be [B, N, D], got shape {tuple(x.shape)}")
    batch, length, _ = x.shape
    sizes = x.new_ones(batch, length)  # [B, N]
    labels = torch.arange(length, device=x.device).expand(batch, length).clone()  # [B, N]
    current = length
    for target in targets:
        _require(current % 2 == 0 and current // 2 <= target <= current,
                 f"order_preserving_merge: target {target} is unreachable from {current} tokens")
        x, sizes, labels = _pair_merge_level(x, sizes, labels, target)
        current = target
    return x, sizes, labels
