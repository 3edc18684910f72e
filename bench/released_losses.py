"""The released code's loss algorithm, loop for loop: the loss side of the timing baseline.

Written from the algorithm of the authors' released `Losses/loss.py` (and the per-video
diversity ratio of its `model.py`): the same Python loops over videos, tokens and candidate
pairs, the same kinds of tensor calls and the same host reads (`.item()`, `float()`, `int()`,
`torch.where(mask)`, boolean-mask indexing, NumPy `where` on the labels). It computes the same
values as `model.losses.msc_loss` (checked by tests/bench/test_released_algorithm.py), so timing
the two compares algorithms, not formulas. It is a bench baseline, not a test oracle: the plain
spec-by-spec oracles live in tests/model/oracles.py.

Query labels are a Python list of ints here, as the released data loader delivers them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model.config import MSCConfig
from tests.model.oracles import segment_count

LOSS_LEVELS = (20, 12, 8, 5)
UNMERGED = 32
MASKED_SCORE = 999.0
EPS = 1e-8


def group_queries(labels: list[int]) -> dict[int, list[int]]:
    """Query indices of each video, built one query at a time (the released `label_dict`)."""
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        if label not in groups:
            groups[label] = []
        groups[label].append(index)
    return groups


def video_nce(scores: torch.Tensor, labels: list[int],
              groups: dict[int, list[int]]) -> torch.Tensor:
    """Video NCE on raw scores [Q, B]: t2v batched, v2t one video at a time into zero buffers."""
    queries, videos = scores.shape
    rows = torch.arange(queries, device=scores.device)
    own = torch.logsumexp(scores[rows, labels].unsqueeze(1), dim=1)  # [Q]
    t2v_all = torch.logsumexp(scores, dim=1)  # [Q]
    v2t_own = torch.zeros(videos).to(scores)
    v2t_all = torch.zeros(videos).to(scores)
    for video, members in groups.items():
        v2t_own[video] = torch.logsumexp(scores[members, video], dim=0)
        v2t_all[video] = torch.logsumexp(scores[:, video], dim=0)
    return (t2v_all - own).mean() + (v2t_all - v2t_own).mean()


def _v2t_hinges(cos: torch.Tensor, labels: np.ndarray, margin: float, hard: bool) -> torch.Tensor:
    """Sum over videos of the v2t hinge: NumPy `where` on the labels, a sort per video."""
    by_video = cos.t()  # [B, Q]
    total = 0
    for video in range(by_video.shape[0]):
        positive = torch.mean(by_video[video][np.where(labels == video)])
        negatives, _ = torch.sort(by_video[video][np.where(labels != video)[0]], descending=True)
        if hard:
            negative = negatives[0]
        else:
            negative = negatives[torch.randint(0, negatives.shape[0], size=(1,)).to(cos.device)]
        total = total + (margin + negative - positive).clamp(min=0).sum()
    return total


def triplet(cos: torch.Tensor, labels: list[int], margin: float, hard: bool,
            hard_pool: int) -> torch.Tensor:
    """Triplet loss on cosine scores [Q, B]: v2t per video, t2v from a sort of masked scores.

    Hard mode: v2t takes the best negative query, t2v one of the `hard_pool` best other videos.
    """
    queries, videos = cos.shape
    label_array = np.array(labels)
    v2t = _v2t_hinges(cos, label_array, margin, hard)
    rows = torch.arange(queries).to(cos.device)
    own = cos[rows, label_array]  # [Q]
    masked = cos.detach().clone()
    masked[rows, label_array] = MASKED_SCORE
    _, order = torch.sort(masked, descending=True, dim=1)  # [Q, B], the positive first
    top = min(1 + hard_pool, videos) if hard else videos
    picks = order[rows, torch.randint(1, top, size=(queries,)).to(cos.device)]  # [Q]
    t2v = (margin + cos[rows, picks] - own).clamp(min=0)
    return t2v.sum() / queries + v2t / videos


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [Q, Q] from the Gram form, squared clamped at 1e-12, diagonal set 0."""
    squared = x.pow(2).sum(dim=1)  # [Q]
    dist = (squared.unsqueeze(1) + squared.unsqueeze(0) - 2 * x @ x.t()).clamp(min=1e-12).sqrt()
    dist = dist.clone()
    dist[range(len(x)), range(len(x))] = 0
    return dist


def _mean_normalised(dist: torch.Tensor) -> torch.Tensor:
    """Distances divided by the mean of the positive ones (a boolean-mask mean)."""
    return dist / dist[dist > 0].mean()


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance loss: smooth-L1 between mean-normalised distance matrices."""
    with torch.no_grad():
        target = _mean_normalised(pairwise_distances(teacher))
    return F.smooth_l1_loss(_mean_normalised(pairwise_distances(student)), target, reduction="mean")


def _angles(x: torch.Tensor) -> torch.Tensor:
    """Flattened cosines of every (a, b, c) angle from the [Q, Q, D] difference tensor."""
    diff = x.unsqueeze(0) - x.unsqueeze(1)  # [Q, Q, D], diff[a, b] = x_b - x_a
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).view(-1)  # [Q^3]


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle loss: smooth-L1 between the angle cosines of student and teacher."""
    with torch.no_grad():
        target = _angles(teacher)
    return F.smooth_l1_loss(_angles(student), target, reduction="mean")


def diversity_ratios(clip_feats: torch.Tensor, threshold: float) -> dict[int, float]:
    """Per video: transitive closure of the thresholded cosine graph, one boolean update per
    pivot k (Warshall), then the connected off-diagonal fraction read with `.item()`."""
    ratios = {}
    for video in range(len(clip_feats)):
        unit = F.normalize(clip_feats[video], dim=-1)  # [N, Dc]
        reach = (unit @ unit.T) > threshold  # [N, N]
        closure = reach.clone()
        for pivot in range(reach.size(0)):
            closure |= closure[:, pivot].unsqueeze(1) & closure[pivot].unsqueeze(0)
        tokens = closure.size(0)
        off_diagonal = closure[~torch.eye(tokens, dtype=torch.bool, device=reach.device)]
        ratio = off_diagonal.float().sum() / (1e-9 + off_diagonal.numel())
        ratios[video] = ratio.item()
    return ratios


def _greedy_pairs(metric: torch.Tensor, merges: int) -> dict[int, int]:
    """Greedy A-B matching from a Python list of (score, a, b) candidates, each read with
    `.item()`, sorted by decreasing score; returns {A position: B position} of `merges` pairs."""
    positions = torch.arange(metric.shape[0], device=metric.device)
    a_positions, b_positions = positions[::2], positions[1::2]
    sim = metric[a_positions] @ metric[b_positions].t()  # [N/2, N/2]
    candidates = []
    for a in range(sim.size(0)):
        for b in range(sim.size(0)):
            candidates.append((float(sim[a, b].item()), a, b))
    candidates.sort(key=lambda candidate: candidate[0], reverse=True)
    pairs: dict[int, int] = {}
    used_a, used_b = set(), set()
    for _, a, b in candidates:
        if len(pairs) >= merges:
            break
        if a in used_a or b in used_b:
            continue
        pairs[int(a_positions[a].item())] = int(b_positions[b].item())
        used_a.add(a)
        used_b.add(b)
    return pairs


def _pair_mean(x: torch.Tensor, a: int, b: int, size_a: torch.Tensor, size_b: torch.Tensor):
    """Size-weighted mean of rows a and b of x, as a [1, D] row."""
    return ((x[a] * size_a + x[b] * size_b) / (size_a + size_b)).unsqueeze(0)


def merge_level(segments, clip_feats, sizes, frame_labels, target: int):
    """One loss-side level of one video, rebuilt token by token: a merged pair becomes the
    size-weighted mean at A's place, B's place is dropped, frames are relabelled with
    `torch.where(labels == old)`. `segments[N, D], clip_feats[N, Dc], sizes[N, 1], frame_labels[L]`
    -> the same with `target` tokens."""
    count = segments.shape[0]
    pairs = _greedy_pairs(F.normalize(clip_feats, dim=-1), count - target)
    rows, clip_rows, new_sizes = [], [], []
    new_labels = torch.zeros_like(frame_labels)
    slot = 0
    for old in range(count):
        if old in pairs:
            partner = pairs[old]
            size_a, size_b = sizes[old], sizes[partner]
            rows.append(_pair_mean(segments, old, partner, size_a, size_b))
            clip_rows.append(_pair_mean(clip_feats, old, partner, size_a, size_b))
            new_sizes.append((size_a + size_b).unsqueeze(0))
            new_labels[torch.where(frame_labels == old)[0]] = slot
            new_labels[torch.where(frame_labels == partner)[0]] = slot
        elif old in pairs.values():
            continue
        else:
            rows.append(segments[old].unsqueeze(0))
            clip_rows.append(clip_feats[old].unsqueeze(0))
            new_sizes.append(sizes[old].unsqueeze(0))
            new_labels[torch.where(frame_labels == old)[0]] = slot
        slot += 1
    return torch.cat(rows), torch.cat(clip_rows), torch.cat(new_sizes), new_labels


def merge_video(segments, clip_feats, sizes, frame_labels, count: int):
    """Levels 20, 12, 8, 5 in turn until the video's count (32: unchanged)."""
    if count == UNMERGED:
        return segments, frame_labels
    for level in LOSS_LEVELS:
        segments, clip_feats, sizes, frame_labels = merge_level(segments, clip_feats, sizes,
                                                                frame_labels, level)
        if level == count:
            break
    return segments, frame_labels


def _video_alignment(frames: torch.Tensor, segments: torch.Tensor,
                     frame_labels: torch.Tensor) -> torch.Tensor:
    """Frame->segment + segment->frame contrastive terms of one video: frames [L, D],
    segments [K, D], frame_labels [L] in 0..K-1."""
    segment_ids = torch.arange(segments.shape[0], device=frames.device)  # [K]
    own = frame_labels.unsqueeze(1) == segment_ids  # [L, K]
    other = ~own
    sim = frames @ segments.detach().t()  # [L, K]
    sim = torch.exp(sim - sim.max(dim=1, keepdim=True)[0].detach())
    pos = (sim * own).sum(dim=1) / (own.sum(dim=1) + EPS)  # [L]
    neg = (sim * other).sum(dim=1) / (other.sum(dim=1) + EPS)
    frame_to_segment = -torch.log(pos / (pos + neg + EPS)).mean()
    sim = frames.detach() @ segments.t()  # [L, K]
    sim = torch.exp(sim - sim.max(dim=0, keepdim=True)[0].detach())
    pos = (sim * own).sum(dim=0) / (own.sum(dim=0) + EPS)  # [K]
    neg = (sim * other).sum(dim=0) / (other.sum(dim=0) + EPS)
    torch.max(pos, neg)  # computed and left unused by the released code: kept for the op count
    return frame_to_segment - torch.log(pos / (pos + neg)).mean()


def cbva(frames, segments, frame_labels, sizes, clip_feats, ratios: dict[int, float]):
    """Adaptive CBVA one video at a time: count from the ratio, merge, align both ways.

    `frames[B, L, D]`, `segments[B, 32, D]` (alignment-projected), `frame_labels[B, L]`,
    `sizes[B, 32, 1]`, `clip_feats[B, 32, Dc]`. Returns (batch-mean loss, mean segment count
    read with `.item()`)."""
    videos = segments.shape[0]
    total = 0.0
    counts = []
    for video in range(videos):
        merged, labels = merge_video(segments[video], clip_feats[video], sizes[video],
                                     frame_labels[video], segment_count(ratios[video]))
        counts.append(merged.shape[0])
        total = total + _video_alignment(frames[video], merged, labels.to(merged.device))
    return total / videos, torch.tensor(counts, dtype=torch.float32).mean().item()


def released_loss(cfg: MSCConfig, out: dict, hard: bool) -> tuple[torch.Tensor, dict]:
    """Total loss and its terms from the released-algorithm forward's outputs.

    `out` keys: raw_clip, raw_frame, cos_clip, cos_frame [Q, B]; query [Q, D]; end_tokens
    [Q, Dt]; aligned_clips [B, 32, D]; aligned_frames [B, L, D]; labels (list), groups
    (`group_queries`), ratios (`diversity_ratios`), clip_labels [B, L], clip_sizes [B, 32, 1],
    clip_feats [B, 32, Dc]. Terms are weighted as in msc_loss; `total` is also read as a float.
    """
    labels, groups = out["labels"], out["groups"]
    terms = {
        "nce_clip": cfg.nce_clip * video_nce(out["raw_clip"], labels, groups),
        "triplet_clip": triplet(out["cos_clip"], labels, cfg.margin, hard, cfg.hard_pool),
        "nce_frame": cfg.nce_frame * video_nce(out["raw_frame"], labels, groups),
        "triplet_frame": triplet(out["cos_frame"], labels, cfg.margin, hard, cfg.hard_pool),
        "tcp": cfg.rkd_d_coef * rkd_distance(out["query"], out["end_tokens"])
        + cfg.rkd_a_coef * rkd_angle(out["query"], out["end_tokens"]),
    }
    alignment, segments = cbva(out["aligned_frames"], out["aligned_clips"], out["clip_labels"],
                               out["clip_sizes"], out["clip_feats"], out["ratios"])
    terms["cbva"] = cfg.vl_coef * alignment
    total = (terms["nce_clip"] + terms["triplet_clip"] + terms["nce_frame"] + terms["triplet_frame"]
             + terms["cbva"] + terms["tcp"])
    terms.update(total=total, loss_overall=float(total.detach()), segments=segments)
    return total, terms
