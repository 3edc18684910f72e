"""Token merging ops of MSC (docs/model.md: Inputs, CBVA), batched and compile-friendly.

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
    """Return `x / (||x|| + eps)` along the last dimension (docs/model.md, Inputs)."""
    return x / (x.norm(dim=-1, keepdim=True) + eps)


def autocast_off(device: torch.device):
    """Context that turns autocast off on `device`: similarity ranks, thresholds and the CBVA
    exponentials need at least float32, even inside a bf16 training step."""
    return torch.autocast(device_type=device.type, enabled=False)


def widen(x: torch.Tensor) -> torch.Tensor:
    """`x` as float32 when it is a 16-bit float tensor, else unchanged."""
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


def _require(condition: bool, message: str) -> None:
    """Raise ValueError with `message` when a shape check fails."""
    if not condition:
        raise ValueError(message)


def fixed_length(frames: torch.Tensor, length: int = 128) -> torch.Tensor:
    """Resample `frames[n, D]` to `[length, D]` (docs/model.md, Fixed length).

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
    odd = torch.arange(2, device=x.device)
    new_index = start.unsqueeze(2) + odd * (~merged).long().unsqueeze(2)  # [B, P, 2]
    new_index = new_index.reshape(batch, length)  # [B, N]
    weighted = x * sizes.unsqueeze(-1)  # [B, N, D]
    sums = x.new_zeros(batch, target, x.shape[2]).scatter_add_(
        1, new_index.unsqueeze(-1).expand_as(weighted), weighted)  # [B, T, D]
    new_sizes = sizes.new_zeros(batch, target).scatter_add_(1, new_index, sizes)  # [B, T]
    return sums / new_sizes.unsqueeze(-1), new_sizes, new_index.gather(1, labels)


def order_preserving_merge(x: torch.Tensor, targets: tuple[int, ...] = OPTOME_TARGETS):
    """Order-preserving token merging (docs/model.md, OP-ToMe) on un-normalised fixed frames.

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


def _interleave(even: torch.Tensor, odd: torch.Tensor, length: int) -> torch.Tensor:
    """Place `even[B, ceil(N/2)]` at positions 0, 2, .. and `odd[B, N//2]` at 1, 3, .. -> [B, N]."""
    if odd.shape[1] < even.shape[1]:
        odd = torch.cat([odd, odd.new_zeros(odd.shape[0], 1)], dim=1)
    return torch.stack([even, odd], dim=2).reshape(even.shape[0], -1)[:, :length]


def _edge_ranks(sim: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """Rank the A-B edges of each video by decreasing similarity, 0 = heaviest.

    Ties keep the flat order (lower A index first, then lower B index), so the ranks are
    distinct. Unusable edges get rank `Na * Nb`. `sim, usable: [B, Na, Nb]` -> int32 [B, Na, Nb].
    """
    batch, n_a, n_b = sim.shape
    flat = sim.masked_fill(~usable, float("-inf")).reshape(batch, n_a * n_b)  # [B, E]
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices  # [B, E]
    steps = torch.arange(n_a * n_b, device=sim.device).expand(batch, n_a * n_b)
    rank = torch.empty_like(order).scatter_(1, order, steps).reshape(batch, n_a, n_b)
    return rank.masked_fill(~usable, n_a * n_b).to(torch.int32)  # int32: much faster min-reductions


def _greedy_matching(rank: torch.Tensor, rounds: int) -> torch.Tensor:
    """Greedy one-to-one matching in increasing rank, as repeated locally dominant picks.

    Each round takes every free edge that is the best free edge of both its ends; with distinct
    ranks these are exactly edges of the sequential greedy matching, and the heaviest free edge
    is always among them, so after r rounds the r first greedy picks are all taken (min(Na, Nb)
    rounds give the full matching). `rank: int [B, Na, Nb]` (unusable = Na * Nb) -> bool [B, Na, Nb].
    """
    _, n_a, n_b = rank.shape
    unusable = n_a * n_b
    free = rank
    matched = torch.zeros_like(rank, dtype=torch.bool)
    for _ in range(rounds):
        best_of_a = free.amin(dim=2, keepdim=True)  # [B, Na, 1]
        best_of_b = free.amin(dim=1, keepdim=True)  # [B, 1, Nb]
        pick = (free == best_of_a) & (free == best_of_b) & (free < unusable)  # [B, Na, Nb]
        matched = matched | pick
        taken = pick.any(dim=2, keepdim=True) | pick.any(dim=1, keepdim=True)  # [B, Na, Nb]
        free = free.masked_fill(taken, unusable)
    return matched


def _heaviest_edges(rank: torch.Tensor, matched: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    """Keep the `quota[B]` heaviest matched edges of each video: the first greedy picks.

    `rank, matched: [B, Na, Nb]`; returns bool [B, Na, Nb].
    """
    _, n_a, n_b = rank.shape
    edge_rank = torch.where(matched, rank, n_a * n_b).amin(dim=2)  # [B, Na]
    heavier = (edge_rank.unsqueeze(1) < edge_rank.unsqueeze(2)).sum(dim=2)  # [B, Na]
    chosen = (edge_rank < n_a * n_b) & (heavier < quota.unsqueeze(1))  # [B, Na]
    return matched & chosen.unsqueeze(2)


def _merge_plan(merges: torch.Tensor, valid: torch.Tensor):
    """Token bookkeeping of one bipartite level from its merged edges `merges[B, Na, Nb]`.

    Returns `(partner[B, N], has_partner[B, N], source[B, N], slot_valid[B, N], new_of_old[B, N])`:
    the B-partner position of each A token that absorbs one, the old position feeding each new
    slot (kept tokens in order, then the rest), which new slots hold a token, and the new index of
    every old token (an absorbed B token maps to its A token's slot).
    """
    batch, n_a, n_b = merges.shape
    length = valid.shape[1]
    positions = torch.arange(length, device=valid.device).expand(batch, length)  # [B, N]
    b_index = torch.arange(n_b, device=valid.device)
    a_index = torch.arange(n_a, device=valid.device)
    absorbs = merges.any(dim=2)  # [B, Na]
    absorbed = merges.any(dim=1)  # [B, Nb]
    partner_b = 2 * (merges.long() * b_index).sum(dim=2) + 1  # [B, Na]
    owner_a = 2 * (merges.long() * a_index.unsqueeze(1)).sum(dim=1)  # [B, Nb]
    partner = torch.where(_interleave(absorbs, absorbed, length),
                          _interleave(partner_b, owner_a, length), positions)  # [B, N]
    has_partner = _interleave(absorbs, torch.zeros_like(absorbed), length)  # [B, N]
    kept = valid & ~_interleave(torch.zeros_like(absorbs), absorbed, length)  # [B, N]
    source = torch.sort(torch.where(kept, positions, positions + length), dim=1).indices  # [B, N]
    slot_valid = positions < kept.sum(dim=1, keepdim=True)  # [B, N]
    new_rank = kept.long().cumsum(dim=1) - 1  # [B, N]
    new_of_old = torch.where(kept, new_rank, new_rank.gather(1, partner))  # [B, N]
    return partner, has_partner, source, slot_valid, new_of_old


def _assignment(source, partner, has_partner, slot_valid) -> torch.Tensor:
    """0/1 map of one level: `assign[b, i, j]` is True when old token j goes into new slot i.

    Slot i takes old token `source[i]` and, when that token absorbs one, its B partner.
    `[B, N]` inputs -> bool [B, N, N].
    """
    columns = torch.arange(source.shape[1], device=source.device)
    index_b = partner.gather(1, source)  # [B, N]
    with_partner = has_partner.gather(1, source) & slot_valid  # [B, N]
    takes_a = (source.unsqueeze(-1) == columns) & slot_valid.unsqueeze(-1)  # [B, N, N]
    takes_b = (index_b.unsqueeze(-1) == columns) & with_partner.unsqueeze(-1)
    return takes_a | takes_b


def bipartite_assignment(ab_cosine: torch.Tensor, sizes: torch.Tensor, target, max_merges: int | None = None):
    """Plan one bipartite level from the A-B cosines `ab_cosine[B, Na, Nb]` (A = even, B = odd
    positions) of each video's valid tokens (`sizes[B, N] > 0`, stored first).

    Greedy one-to-one matching in decreasing cosine (ties: lower A, then lower B first); the
    first `valid - target` picks are merged. Returns `(assign[B, N, N] bool, new_sizes[B, N],
    new_of_old[B, N])`: which old tokens form each new slot, the summed sizes (0 = padding), and
    the new index of every old token. `max_merges` caps the matching rounds (see bipartite_merge).
    """
    valid = sizes > 0  # [B, N]
    target = torch.as_tensor(target, device=sizes.device).expand(sizes.shape[0])  # [B]
    usable = valid[:, 0::2].unsqueeze(2) & valid[:, 1::2].unsqueeze(1)  # [B, Na, Nb]
    rank = _edge_ranks(ab_cosine, usable)
    quota = (valid.sum(dim=1) - target).clamp(min=0)  # [B]
    rounds = min(rank.shape[1], rank.shape[2], rank.shape[1] if max_merges is None else max_merges)
    merges = _heaviest_edges(rank, _greedy_matching(rank, rounds), quota)  # [B, Na, Nb]
    partner, has_partner, source, slot_valid, new_of_old = _merge_plan(merges, valid)
    assign = _assignment(source, partner, has_partner, slot_valid)  # [B, N, N]
    new_sizes = (assign.to(sizes.dtype) * sizes.unsqueeze(1)).sum(dim=2)  # [B, N]
    return assign, new_sizes, new_of_old


def size_weighted_means(weights: torch.Tensor, new_sizes: torch.Tensor) -> torch.Tensor:
    """Size weights `weights[B, N, M]` (rows summing to `new_sizes[B, N]`) -> mean matrix [B, N, M].

    `matrix @ tokens` gives each new token as the size-weighted mean of its old tokens; a token
    that stays alone gets weight s / s = 1 exactly; padding rows are 0.
    """
    safe = torch.where(new_sizes > 0, new_sizes, torch.ones_like(new_sizes))  # [B, N]
    return weights / safe.unsqueeze(2)


def _check_bipartite_inputs(x, metric, sizes, labels, target, max_merges) -> None:
    """Raise ValueError naming the argument whose shape does not fit bipartite_merge."""
    _require(x.dim() == 3, f"bipartite_merge: x must be [B, N, D], got shape {tuple(x.shape)}")
    batch, length, _ = x.shape
    _require(metric.dim() == 3 and metric.shape[:2] == (batch, length),
             f"bipartite_merge: metric must be [{batch}, {length}, Dm], got shape {tuple(metric.shape)}")
    _require(tuple(sizes.shape) == (batch, length),
             f"bipartite_merge: sizes must be [{batch}, {length}], got shape {tuple(sizes.shape)}")
    _require(labels.dim() == 2 and labels.shape[0] == batch,
             f"bipartite_merge: labels must be [{batch}, F], got shape {tuple(labels.shape)}")
    if isinstance(target, torch.Tensor):
        _require(target.dim() == 0 or tuple(target.shape) == (batch,),
                 f"bipartite_merge: target must be an int or a [{batch}] tensor, got shape {tuple(target.shape)}")
    _require(max_merges is None or max_merges >= 0, f"bipartite_merge: max_merges must be >= 0, got {max_merges}")


def bipartite_merge(x: torch.Tensor, metric: torch.Tensor, sizes: torch.Tensor, labels: torch.Tensor,
                    target, max_merges: int | None = None):
    """One loss-side merging level (docs/model.md, CBVA step 3) on every video of the batch.

    A = even, B = odd positions among each video's valid tokens (sizes > 0, stored first; padding
    after them). A-B edges are taken greedily, one-to-one, in decreasing cosine similarity of
    `metric` (ties: lower A index, then lower B index first), stopping after `valid - target`
    merges (at most the matching size). A merged pair becomes one token at A's position: `x`
    and `metric` by size-weighted mean, sizes added; B's position disappears, the others keep
    their order. Frames are relabelled. A video whose target is >= its valid count is unchanged.
    Shapes stay static: `x[B, N, D], metric[B, N, Dm], sizes[B, N], labels[B, F]` in, the same
    shapes out, padding slots with size 0 and zero values. `target`: int or long tensor [B].
    `max_merges` (a Python int) promises that no video merges more pairs than that; it caps the
    matching rounds (default: min(Na, Nb), the full matching). Raises ValueError for mismatched
    shapes or a max_merges below 0.
    """
    _check_bipartite_inputs(x, metric, sizes, labels, target, max_merges)
    with autocast_off(x.device):
        unit = F.normalize(widen(metric.detach()), dim=-1)  # [B, N, Dm]
        ab_cosine = unit[:, 0::2] @ unit[:, 1::2].transpose(1, 2)  # [B, Na, Nb]
    assign, new_sizes, new_of_old = bipartite_assignment(ab_cosine, sizes, target, max_merges)
    matrix = size_weighted_means(assign.to(sizes.dtype) * sizes.unsqueeze(1), new_sizes)  # [B, N, N]
    new_x = matrix.to(x.dtype) @ x  # [B, N, D]
    new_metric = matrix.to(metric.dtype) @ metric  # [B, N, Dm]
    return new_x, new_metric, new_sizes, new_of_old.gather(1, labels)


def closure_ratio(feats: torch.Tensor, threshold: float) -> torch.Tensor:
    """Diversity ratio omega (docs/model.md, CBVA step 1) for every video: `feats[B, N, D]` -> [B].

    Graph: edge where cos(f_i, f_j) > threshold, self loops included; its transitive closure by
    ceil(log2(N - 1)) boolean matrix squarings; omega = fraction of the N(N-1) ordered
    off-diagonal pairs that are connected. Raises ValueError for non-3-D input or N < 2.
    """
    _require(feats.dim() == 3, f"closure_ratio: feats must be [B, N, D], got shape {tuple(feats.shape)}")
    length = feats.shape[1]
    _require(length >= 2, f"closure_ratio: needs at least 2 tokens per video, got N={length}")
    feats = widen(feats.detach())
    eye = torch.eye(length, dtype=torch.bool, device=feats.device)
    with autocast_off(feats.device):
        unit = F.normalize(feats, dim=-1)  # [B, N, D]
        reach = ((unit @ unit.transpose(1, 2)) > threshold) | eye  # [B, N, N]
        for _ in range(max(1, math.ceil(math.log2(length - 1)))):
            paths = reach.to(feats.dtype)
            reach = (paths @ paths) > 0  # [B, N, N]
    connected = reach.sum(dim=(1, 2)) - length  # [B]
    return connected.to(feats.dtype) / (length * (length - 1))


def segment_count(ratio: torch.Tensor) -> torch.Tensor:
    """Adaptive segment count (docs/model.md, CBVA): omega [B] -> long [B] in {5, 8, 12, 20, 32}."""
    counts = torch.full_like(ratio, SEGMENT_COUNTS[-1], dtype=torch.long)  # [B]
    for bound, count in reversed(RATIO_STEPS):
        counts = torch.where(ratio >= bound, torch.full_like(counts, count), counts)
    return counts
