"""Retrieval metrics and semantic-collapse diagnostics (docs/model.md, Metrics)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_KS = (1, 5, 10, 100)
SPEARMAN_MAX_ITEMS = 4000
SUBSAMPLE_SEED = 0


def gt_ranks(scores: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Rank (1 = best) of each query's ground-truth video: long [Qn].

    rank = number of videos scoring >= the ground truth's score, so ties count against the
    query; a non-finite ground-truth score ranks last (Vn). Raises ValueError for mismatched
    shapes or ground-truth indices outside [0, Vn).
    """
    if scores.dim() != 2 or gt.dim() != 1 or gt.shape[0] != scores.shape[0]:
        raise ValueError(f"gt_ranks: expected scores [Qn, Vn] and gt [Qn], got "
                         f"{tuple(scores.shape)} and {tuple(gt.shape)}")
    if gt.numel() and (int(gt.min()) < 0 or int(gt.max()) >= scores.shape[1]):
        raise ValueError(f"gt_ranks: gt holds video indices outside [0, {scores.shape[1]})")
    own = scores.gather(1, gt.long().unsqueeze(1))  # [Qn, 1]
    ranks = (scores >= own).sum(dim=1)  # [Qn]
    return torch.where(torch.isfinite(own.squeeze(1)), ranks, torch.full_like(ranks, scores.shape[1]))


def recall_from_ranks(ranks: torch.Tensor, ks=DEFAULT_KS) -> dict[str, float]:
    """R@K in percent for each K and their sum "SumR" from ranks [Qn] (1 = best).

    Raises ValueError for an empty rank tensor or a K < 1.
    """
    if ranks.numel() == 0:
        raise ValueError("recall_from_ranks: no ranks (0 queries)")
    if any(k < 1 for k in ks):
        raise ValueError(f"recall_from_ranks: every K must be >= 1, got {tuple(ks)}")
    result = {f"R@{k}": 100.0 * float((ranks <= k).double().mean()) for k in ks}
    result["SumR"] = sum(result[f"R@{k}"] for k in ks)
    return result


def recall_at_k(scores: torch.Tensor, gt: torch.Tensor, ks=DEFAULT_KS) -> dict[str, float]:
    """R@K (percent) and SumR of scores [Qn, Vn] with ground-truth video indices gt [Qn]."""
    return recall_from_ranks(gt_ranks(scores, gt), ks)


def diff_norm(feats: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Diff.Norm = (intra - total) / (intra + total) (docs/model.md, Metrics), a 0-d float tensor.

    intra = mean cosine over ordered off-diagonal pairs in the same group, total = over all
    ordered off-diagonal pairs. Computed in O(N * D) from per-group sums of unit vectors.
    Raises ValueError for mismatched shapes, N < 2, or no group with two members.
    """
    if feats.dim() != 2 or groups.dim() != 1 or groups.shape[0] != feats.shape[0]:
        raise ValueError(f"diff_norm: expected feats [N, D] and groups [N], got "
                         f"{tuple(feats.shape)} and {tuple(groups.shape)}")
    count = feats.shape[0]
    if count < 2:
        raise ValueError(f"diff_norm: needs at least 2 items, got {count}")
    unit = F.normalize(feats.double(), dim=1)  # [N, D]
    self_sim = unit.pow(2).sum(dim=1)  # [N], 1 (0 for zero vectors)
    _, group_index = torch.unique(groups, return_inverse=True)
    sums = unit.new_zeros(int(group_index.max()) + 1, unit.shape[1])
    sums.index_add_(0, group_index, unit)  # [G, D]
    sizes = torch.bincount(group_index).double()  # [G]
    intra_pairs = float((sizes * (sizes - 1)).sum())
    if intra_pairs == 0:
        raise ValueError("diff_norm: no group has two members, intra-group similarity is undefined")
    intra = (sums.pow(2).sum() - self_sim.sum()) / intra_pairs
    total = (unit.sum(dim=0).pow(2).sum() - self_sim.sum()) / (count * (count - 1))
    return ((intra - total) / (intra + total)).float()


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties get their average rank (as scipy.stats.rankdata)."""
    order = torch.argsort(values)
    sorted_values = values[order]
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True,
                                                  return_counts=True)
    ends = counts.cumsum(0).double()  # [U], last 1-based rank of each tie group
    average = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = average[inverse]
    return ranks


def _offdiag_cosines(x: torch.Tensor) -> torch.Tensor:
    """Cosines of the pairs i < j of x [N, D]: [N (N - 1) / 2]."""
    unit = F.normalize(x.double(), dim=1)
    rows, cols = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    return (unit @ unit.t())[rows, cols]


def spearman_collapse(student: torch.Tensor, teacher: torch.Tensor,
                      max_items: int | None = SPEARMAN_MAX_ITEMS) -> torch.Tensor:
    """Spearman correlation x100 between the off-diagonal pairwise cosines of student [Q, D]
    and of teacher [Q, Dt], a 0-d float tensor.

    With more than `max_items` queries, a fixed-seed subsample of `max_items` queries is used
    (None: all). Raises ValueError for mismatched shapes, fewer than 3 queries or
    max_items < 3. A constant similarity list has no ranks to correlate: the result is NaN.
    """
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"spearman_collapse: expected student [Q, D] and teacher [Q, Dt], got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if max_items is not None and max_items < 3:
        raise ValueError(f"spearman_collapse: max_items must be >= 3, got {max_items}")
    count = student.shape[0]
    if count < 3:
        raise ValueError(f"spearman_collapse: needs at least 3 queries, got {count}")
    if max_items is not None and count > max_items:
        generator = torch.Generator().manual_seed(SUBSAMPLE_SEED)
        keep = torch.randperm(count, generator=generator)[:max_items].to(student.device)
        student, teacher = student[keep], teacher[keep]
    a = _average_ranks(_offdiag_cosines(student.detach()))
    b = _average_ranks(_offdiag_cosines(teacher.detach()))
    a, b = a - a.mean(), b - b.mean()
    return (100.0 * (a * b).sum() / (a.norm() * b.norm())).float()
