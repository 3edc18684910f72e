"""Plain loop versions of the fast ops, written from docs/model.md; used only as test oracles.

Everything here works one video, one token, one pair at a time with Python lists and loops, so
that each step reads like that page. Padded batches (valid tokens first, sizes 0 after) are
handled by the `*_batch` wrappers, which loop over videos.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_LEVELS = (20, 12, 8, 5)


def fixed_length(frames: torch.Tensor, length: int = 128) -> torch.Tensor:
    """Fixed length, row by row."""
    n = frames.shape[0]
    bounds = [min(round(i * n / length), n - 1) for i in range(length + 1)]
    rows = []
    for i in range(length):
        start, stop = bounds[i], bounds[i + 1]
        rows.append(frames[start:stop].mean(dim=0) if start < stop else frames[start])
    return torch.stack(rows)


def uniform_clips(x: torch.Tensor, count: int = 32):
    """Uniform clips of one video `x[N, D]`: means of consecutive groups of N // count frames."""
    group = x.shape[0] // count
    tokens = torch.stack([x[k * group:(k + 1) * group].mean(dim=0) for k in range(count)])
    sizes = torch.full((count,), float(group), dtype=x.dtype)
    labels = torch.tensor([f // group for f in range(x.shape[0])])
    return tokens, sizes, labels


def _merge_two(value_a, size_a, value_b, size_b):
    return (size_a * value_a + size_b * value_b) / (size_a + size_b)


def order_preserving_level(tokens: list, sizes: list, labels: list, target: int):
    """One OP-ToMe level on Python lists; ties go to the lower pair index."""
    pairs = len(tokens) // 2
    scores = [float(torch.dot(tokens[2 * p], tokens[2 * p + 1])) for p in range(pairs)]
    by_score = sorted(range(pairs), key=lambda p: -scores[p])
    merged = set(by_score[:len(tokens) - target])
    new_tokens, new_sizes, new_index = [], [], {}
    for p in range(pairs):
        a, b = 2 * p, 2 * p + 1
        if p in merged:
            new_index[a] = new_index[b] = len(new_tokens)
            new_tokens.append(_merge_two(tokens[a], sizes[a], tokens[b], sizes[b]))
            new_sizes.append(sizes[a] + sizes[b])
        else:
            for t in (a, b):
                new_index[t] = len(new_tokens)
                new_tokens.append(tokens[t])
                new_sizes.append(sizes[t])
    return new_tokens, new_sizes, [new_index[label] for label in labels]


def order_preserving_merge(x: torch.Tensor, targets=(80, 52, 32)):
    """OP-ToMe for one video `x[N, D]` -> (tokens[T, D], sizes[T], labels[N])."""
    tokens = list(x)
    sizes = [1.0] * len(tokens)
    labels = list(range(len(tokens)))
    for target in targets:
        tokens, sizes, labels = order_preserving_level(tokens, sizes, labels, target)
    return torch.stack(tokens), torch.tensor(sizes, dtype=x.dtype), torch.tensor(labels)


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(torch.dot(F.normalize(u, dim=0), F.normalize(v, dim=0)))


def greedy_pairs(metric: list, quota: int) -> list:
    """Sequential greedy one-to-one A-B matching (CBVA step 3), at most `quota` pairs.

    A = even, B = odd positions; edges visited by decreasing cosine, ties by lower A then lower
    B position. Returns [(a, b), ...] in the order taken.
    """
    edges = [(cosine(metric[a], metric[b]), a, b)
             for a in range(0, len(metric), 2) for b in range(1, len(metric), 2)]
    edges.sort(key=lambda edge: (-edge[0], edge[1], edge[2]))
    taken, pairs = set(), []
    for _, a, b in edges:
        if len(pairs) == quota:
            break
        if a not in taken and b not in taken:
            taken.update((a, b))
            pairs.append((a, b))
    return pairs


def bipartite_level(tokens: list, metric: list, sizes: list, labels: list, target: int):
    """One loss-side merging level on Python lists of one video's valid tokens."""
    partner = dict(greedy_pairs(metric, max(len(tokens) - target, 0)))
    absorbed = set(partner.values())
    new_tokens, new_metric, new_sizes, new_index = [], [], [], {}
    for t in range(len(tokens)):
        if t in absorbed:
            continue
        new_index[t] = len(new_tokens)
        if t in partner:
            b = partner[t]
            new_index[b] = len(new_tokens)
            new_tokens.append(_merge_two(tokens[t], sizes[t], tokens[b], sizes[b]))
            new_metric.append(_merge_two(metric[t], sizes[t], metric[b], sizes[b]))
            new_sizes.append(sizes[t] + sizes[b])
        else:
            new_tokens.append(tokens[t])
            new_metric.append(metric[t])
            new_sizes.append(sizes[t])
    return new_tokens, new_metric, new_sizes, [new_index[label] for label in labels]


def _unpad(x, metric, sizes, labels, video):
    valid = [t for t in range(sizes.shape[1]) if float(sizes[video, t]) > 0]
    return ([x[video, t] for t in valid], [metric[video, t] for t in valid],
            [sizes[video, t] for t in valid], [int(label) for label in labels[video]])


def _pad(rows: list, length: int, like: torch.Tensor) -> torch.Tensor:
    padding = [torch.zeros_like(like)] * (length - len(rows))
    return torch.stack(rows + padding)


def bipartite_merge_batch(x, metric, sizes, labels, targets: list):
    """Loop over videos of a padded batch, one bipartite level each; returns padded tensors."""
    out_x, out_metric, out_sizes, out_labels = [], [], [], []
    length = x.shape[1]
    for video, target in enumerate(targets):
        tokens, feats, weights, marks = bipartite_level(*_unpad(x, metric, sizes, labels, video), target)
        out_x.append(_pad(tokens, length, x[video, 0]))
        out_metric.append(_pad(feats, length, metric[video, 0]))
        out_sizes.append(_pad(weights, length, sizes[video, 0]))
        out_labels.append(torch.tensor(marks))
    return torch.stack(out_x), torch.stack(out_metric), torch.stack(out_sizes), torch.stack(out_labels)


def closure_ratio(feats: torch.Tensor, threshold: float) -> float:
    """Omega of one video `feats[N, D]`: BFS over the cos > threshold graph."""
    n = feats.shape[0]
    neighbours = [[j for j in range(n) if j == i or cosine(feats[i], feats[j]) > threshold] for i in range(n)]
    connected = 0
    for start in range(n):
        seen, frontier = {start}, [start]
        while frontier:
            node = frontier.pop()
            for nxt in neighbours[node]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        connected += len(seen) - 1
    return connected / (n * (n - 1))


def segment_count(ratio: float) -> int:
    """CBVA step 2: segment count."""
    if ratio >= 0.8:
        return 5
    if ratio >= 0.6:
        return 8
    if ratio >= 0.4:
        return 12
    if ratio >= 0.2:
        return 20
    return 32


def merge_video(segments: list, clip_feats: list, sizes: list, labels: list, count: int):
    """Loss-side merging of one video: levels 20, 12, 8, 5, stopping at `count`."""
    if count >= len(segments):
        return segments, sizes, labels
    for level in LOSS_LEVELS:
        segments, clip_feats, sizes, labels = bipartite_level(segments, clip_feats, sizes, labels, level)
        if level == count:
            break
    return segments, sizes, labels


def frame_to_segment(frames: torch.Tensor, segments: torch.Tensor, labels: list) -> torch.Tensor:
    """CBVA step 4, frame->segment, one frame at a time."""
    total = 0.0
    detached = segments.detach()
    for f, label in enumerate(labels):
        sims = detached @ frames[f]  # [K]
        exps = (sims - sims.max().detach()).exp()
        own = [k for k in range(len(exps)) if k == label]
        others = [k for k in range(len(exps)) if k != label]
        pos = exps[own].sum() / (len(own) + 1e-8)
        neg = exps[others].sum() / (len(others) + 1e-8)
        total = total - torch.log(pos / (pos + neg + 1e-8))
    return total / len(labels)


def segment_to_frame(frames: torch.Tensor, segments: torch.Tensor, labels: list) -> torch.Tensor:
    """CBVA step 4, segment->frame, one segment at a time."""
    total = 0.0
    detached = frames.detach()
    for k in range(segments.shape[0]):
        sims = detached @ segments[k]  # [L]
        exps = (sims - sims.max().detach()).exp()
        own = [f for f, label in enumerate(labels) if label == k]
        others = [f for f, label in enumerate(labels) if label != k]
        pos = exps[own].sum() / (len(own) + 1e-8)
        neg = exps[others].sum() / (len(others) + 1e-8)
        total = total - torch.log(pos / (pos + neg))
    return total / segments.shape[0]


def cbva_loss(frames, segments, labels, sizes, clip_feats, counts):
    """CBVA steps 3-5 one video at a time -> (batch mean loss, mean segment count)."""
    losses, kept = [], []
    for video in range(frames.shape[0]):
        merged, _, marks = merge_video(list(segments[video]), list(clip_feats[video].detach()),
                                       list(sizes[video]), [int(v) for v in labels[video]], int(counts[video]))
        merged = torch.stack(merged)
        losses.append(frame_to_segment(frames[video], merged, marks)
                      + segment_to_frame(frames[video], merged, marks))
        kept.append(len(merged))
    return torch.stack(losses).mean(), sum(kept) / len(kept)


def dropout(x: torch.Tensor, bits: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout element by element from given random int32 `bits` (same shape as x): with
    u = bit + 2^31 in [0, 2^32), keep x * (1 / (1 - p)) when u < round((1 - p) 2^32), else 0."""
    limit, scale = round((1.0 - p) * 2 ** 32), 1.0 / (1.0 - p)
    flat_x, flat_bits = x.reshape(-1).tolist(), bits.reshape(-1).tolist()
    out = [value * scale if bit + 2 ** 31 < limit else 0.0
           for value, bit in zip(flat_x, flat_bits, strict=True)]
    return torch.tensor(out, dtype=x.dtype).reshape(x.shape)
