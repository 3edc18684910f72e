"""Plain loop versions of the model's losses, metrics, prior and optimiser, from docs/model.md.

They are slow and obvious on purpose: the test oracles of the batched implementations.
"""
from __future__ import annotations

import math

import torch


def gaussian_prior_loop(length: int, width: float | None) -> torch.Tensor:
    """Gaussian prior: g_ij = exp(-(p_j - c_i)^2 / (2 s^2)) / (s sqrt(2 pi)), rows / their max."""
    if width is None:
        return torch.ones(length, length, dtype=torch.float64)
    sigma = max(width, 0.01) / 9
    positions = [j / (length - 1) if length > 1 else 0.0 for j in range(length)]
    out = torch.zeros(length, length, dtype=torch.float64)
    for i in range(length):
        centre = i / length
        row = [math.exp(-(p - centre) ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))
               for p in positions]
        peak = max(row)
        for j in range(length):
            out[i, j] = row[j] / peak
    return out


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def video_nce_loop(scores: torch.Tensor, labels: list[int]) -> float:
    """Base loss, video-level NCE: t2v + v2t, looping over queries and videos."""
    queries, videos = scores.shape
    s = scores.double().tolist()
    t2v = sum(_logsumexp(s[q]) - s[q][labels[q]] for q in range(queries)) / queries
    v2t_terms = []
    for v in range(videos):
        own = [s[q][v] for q in range(queries) if labels[q] == v]
        if own:
            v2t_terms.append(_logsumexp([s[q][v] for q in range(queries)]) - _logsumexp(own))
    return t2v + sum(v2t_terms) / len(v2t_terms)


def triplet_loop(cos: torch.Tensor, labels: list[int], t2v_negatives: list[int],
                 v2t_negatives: list[int], margin: float) -> float:
    """Base loss, triplet for given negatives (video per query, query per video)."""
    queries, videos = cos.shape
    c = cos.double().tolist()
    t2v = sum(max(0.0, margin + c[q][t2v_negatives[q]] - c[q][labels[q]])
              for q in range(queries)) / queries
    hinges = []
    for v in range(videos):
        own = [c[q][v] for q in range(queries) if labels[q] == v]
        if own:
            positive = sum(own) / len(own)
            hinges.append(max(0.0, margin + c[v2t_negatives[v]][v] - positive))
    return t2v + sum(hinges) / len(hinges)


def _smooth_l1(a: float, b: float) -> float:
    diff = abs(a - b)
    return 0.5 * diff * diff if diff < 1.0 else diff - 0.5


def _distance_matrix(x: list[list[float]]) -> list[list[float]]:
    n = len(x)
    dist = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i != j:
                squared = sum((x[i][k] - x[j][k]) ** 2 for k in range(len(x[i])))
                dist[i][j] = math.sqrt(max(squared, 1e-12))
    positives = [d for row in dist for d in row if d > 0]
    mean = sum(positives) / len(positives)
    return [[d / mean for d in row] for row in dist]


def rkd_distance_loop(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """TCP, RKD distance: smooth-L1 between normalised distance matrices, mean over Q^2."""
    s = _distance_matrix(student.double().tolist())
    t = _distance_matrix(teacher.double().tolist())
    n = len(s)
    return sum(_smooth_l1(s[i][j], t[i][j]) for i in range(n) for j in range(n)) / n ** 2


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(e * e for e in v))
    return [e / norm for e in v] if norm > 1e-12 else [0.0] * len(v)


def _angle(x: list[list[float]], a: int, b: int, c: int) -> float:
    ab = _unit([x[b][k] - x[a][k] for k in range(len(x[a]))])
    ac = _unit([x[c][k] - x[a][k] for k in range(len(x[a]))])
    return sum(p * q for p, q in zip(ab, ac, strict=True))


def rkd_angle_loop(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """TCP, RKD angle: smooth-L1 between triple angle cosines, mean over Q^3."""
    s, t = student.double().tolist(), teacher.double().tolist()
    n = len(s)
    total = 0.0
    for a in range(n):
        for b in range(n):
            for c in range(n):
                total += _smooth_l1(_angle(s, a, b, c), _angle(t, a, b, c))
    return total / n ** 3


def gt_ranks_loop(scores: torch.Tensor, gt: list[int]) -> list[int]:
    """1-based position of the ground truth when videos are sorted by decreasing score and the
    ground truth is placed after every video with the same score."""
    ranks = []
    for q, row in enumerate(scores.tolist()):
        order = sorted(range(len(row)), key=lambda v: (-row[v], v == gt[q]))
        ranks.append(order.index(gt[q]) + 1)
    return ranks


def _cos(a: list[float], b: list[float]) -> float:
    na = math.sqrt(sum(e * e for e in a))
    nb = math.sqrt(sum(e * e for e in b))
    return sum(p * q for p, q in zip(a, b, strict=True)) / (na * nb)


def diff_norm_loop(feats: torch.Tensor, groups: list[int]) -> float:
    """Metrics: Diff.Norm from all ordered off-diagonal pairs, looping."""
    x = feats.double().tolist()
    intra, total = [], []
    for i in range(len(x)):
        for j in range(len(x)):
            if i != j:
                value = _cos(x[i], x[j])
                total.append(value)
                if groups[i] == groups[j]:
                    intra.append(value)
    mean_intra, mean_total = sum(intra) / len(intra), sum(total) / len(total)
    return (mean_intra - mean_total) / (mean_intra + mean_total)


def bert_adam_loop(params: list[torch.Tensor], grads_per_step: list[list[torch.Tensor]],
                   lrs: list[float], decay: list[bool], weight_decay: float,
                   betas=(0.9, 0.999), eps=1e-6, max_grad_norm=1.0) -> list[torch.Tensor]:
    """Optimiser update rule, element by element: per-tensor clipping, no bias correction,
    decoupled decay lr * wd * p on decayed tensors only."""
    values = [p.double().flatten().tolist() for p in params]
    means = [[0.0] * len(v) for v in values]
    squares = [[0.0] * len(v) for v in values]
    for grads, lr in zip(grads_per_step, lrs, strict=True):
        for i, grad in enumerate(grads):
            g = grad.double().flatten().tolist()
            norm = math.sqrt(sum(e * e for e in g))
            scale = min(1.0, max_grad_norm / (norm + 1e-6))
            for k in range(len(g)):
                gk = g[k] * scale
                means[i][k] = betas[0] * means[i][k] + (1 - betas[0]) * gk
                squares[i][k] = betas[1] * squares[i][k] + (1 - betas[1]) * gk * gk
                update = means[i][k] / (math.sqrt(squares[i][k]) + eps)
                if decay[i]:
                    update += weight_decay * values[i][k]
                values[i][k] -= lr * update
    return [torch.tensor(v, dtype=torch.float64).reshape(p.shape)
            for v, p in zip(values, params, strict=True)]
