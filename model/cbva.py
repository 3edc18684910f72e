"""Cross-Branch Video Alignment loss (docs/model.md, CBVA steps 3-5), batched over videos.

Segments are kept at a static length of 32: after loss-side merging a video's K segments come
first and padding segments (size 0) follow; every mean below runs over valid entries only.
"""
from __future__ import annotations

import torch

from model.merge import autocast_off, bipartite_assignment, size_weighted_means, widen

LOSS_LEVELS = (20, 12, 8, 5)
EPS = 1e-8


def _ab_cosine(members: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """A-B cosines of the merged metric tokens `members @ c`, from the Gram matrix `gram = c c^T`.

    `members[B, S, S]` holds the size of every original token inside each current token, so
    `members @ c` is the size-weighted sum (the mean times its size; cosine ignores the scale).
    Norms are clamped at 1e-12 as in F.normalize. Returns [B, Sa, Sb].
    """
    weighted = members @ gram  # [B, S, S]
    norms = (weighted * members).sum(dim=2).clamp(min=1e-24).sqrt()  # [B, S]
    dots = weighted[:, 0::2] @ members[:, 1::2].transpose(1, 2)  # [B, Sa, Sb]
    return dots / (norms[:, 0::2].unsqueeze(2) * norms[:, 1::2].unsqueeze(1))


def merge_segments(segments: torch.Tensor, clip_feats: torch.Tensor, sizes: torch.Tensor,
                   labels: torch.Tensor, counts: torch.Tensor):
    """Loss-side merging: levels 20, 12, 8, 5 in turn, each video stopping at its count.

    Same result as `bipartite_merge` level after level on (segments, clip_feats), but the metric
    is carried as an [S, S] membership matrix over the clip features' Gram matrix instead of
    [S, Dc] rows, and the segments are merged once at the end by the composed size-weighted
    mean. A video whose count is 32 is left unchanged. A level merges at most (previous level -
    level) pairs in any video, which bounds its matching rounds.
    Returns `(segments[B, S, D], sizes[B, S], labels[B, L])`, padding segments with size 0.
    """
    gram = clip_feats @ clip_feats.transpose(1, 2)  # [B, S, S]
    members = torch.diag_embed(sizes.to(gram.dtype))  # [B, S, S]
    previous = segments.shape[1]
    for level in LOSS_LEVELS:
        assign, sizes, new_of_old = bipartite_assignment(
            _ab_cosine(members, gram), sizes, counts.clamp(min=level), max_merges=max(previous - level, 0))
        members = assign.to(members.dtype) @ members  # [B, S, S]
        labels = new_of_old.gather(1, labels)  # [B, L]
        previous = level
    means = size_weighted_means(members, sizes.to(members.dtype))  # [B, S, S]
    return means.to(segments.dtype) @ segments, sizes, labels


def _frame_to_segment(frames, segments, own, valid):
    """Frame->segment term per video: mean_f -log(pos / (pos + neg + 1e-8)) -> [B]."""
    sim = frames @ segments.detach().transpose(1, 2)  # [B, L, S]
    sim = sim.masked_fill(~valid.unsqueeze(1), float("-inf"))
    scores = (sim - sim.amax(dim=2, keepdim=True).detach()).exp()  # [B, L, S]
    own_w = own.to(frames.dtype)
    other_w = (valid.unsqueeze(1) & ~own).to(frames.dtype)
    pos = (scores * own_w).sum(dim=2) / (own_w.sum(dim=2) + EPS)  # [B, L]
    neg = (scores * other_w).sum(dim=2) / (other_w.sum(dim=2) + EPS)  # [B, L]
    return -torch.log(pos / (pos + neg + EPS)).mean(dim=1)


def _segment_to_frame(frames, segments, own, valid):
    """Segment->frame term per video: mean over valid s of -log(pos / (pos + neg)) -> [B]."""
    sim = frames.detach() @ segments.transpose(1, 2)  # [B, L, S]
    scores = (sim - sim.amax(dim=1, keepdim=True).detach()).exp()  # [B, L, S]
    own_w = own.to(frames.dtype)
    other_w = 1.0 - own_w
    pos = (scores * own_w).sum(dim=1) / (own_w.sum(dim=1) + EPS)  # [B, S]
    neg = (scores * other_w).sum(dim=1) / (other_w.sum(dim=1) + EPS)  # [B, S]
    pos = torch.where(valid, pos, torch.ones_like(pos))  # padding segments contribute log(1) = 0
    neg = torch.where(valid, neg, torch.zeros_like(neg))
    per_segment = -torch.log(pos / (pos + neg))  # [B, S]
    weights = valid.to(frames.dtype)
    return (per_segment * weights).sum(dim=1) / weights.sum(dim=1)


def _check_inputs(frames, segments, labels, sizes, clip_feats, counts) -> None:
    """Raise ValueError naming the argument whose shape or dtype does not fit cbva_loss."""
    def require(condition: bool, message: str) -> None:
        if not condition:
            raise ValueError(f"cbva_loss: {message}")

    require(frames.dim() == 3, f"frames must be [B, L, D], got shape {tuple(frames.shape)}")
    batch, length, dim = frames.shape
    require(segments.dim() == 3 and segments.shape[0] == batch and segments.shape[2] == dim,
            f"segments must be [{batch}, S, {dim}], got shape {tuple(segments.shape)}")
    count = segments.shape[1]
    require(tuple(labels.shape) == (batch, length), f"labels must be [{batch}, {length}], got {tuple(labels.shape)}")
    require(not labels.is_floating_point(), f"labels must be an integer tensor, got {labels.dtype}")
    require(tuple(sizes.shape) == (batch, count), f"sizes must be [{batch}, {count}], got {tuple(sizes.shape)}")
    require(clip_feats.dim() == 3 and clip_feats.shape[:2] == (batch, count),
            f"clip_feats must be [{batch}, {count}, Dc], got shape {tuple(clip_feats.shape)}")
    require(tuple(counts.shape) == (batch,), f"counts must be [{batch}], got shape {tuple(counts.shape)}")
    require(not counts.is_floating_point(), f"counts must be an integer tensor, got {counts.dtype}")


def cbva_loss(frames: torch.Tensor, segments: torch.Tensor, labels: torch.Tensor, sizes: torch.Tensor,
              clip_feats: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CBVA (docs/model.md): merge each video's segments down to its count, then align both ways.

    `frames[B, L, D]` and `segments[B, S, D]` are the alignment-projected encoded frames and clip
    tokens, `labels[B, L]` the segment of each frame, `sizes[B, S]` the frames per segment,
    `clip_feats[B, S, Dc]` the clip features (similarity metric of the merging, no gradient),
    `counts[B]` the segment count of each video (32 for every video = non-adaptive CBVA).
    Returns `(loss, mean_segments)`: the batch mean of (frame->segment + segment->frame) before
    `vl_coef`, and the mean number of segments K. Runs in at least float32 with autocast off
    (16-bit inputs are widened). Raises ValueError for mismatched shapes.
    """
    _check_inputs(frames, segments, labels, sizes, clip_feats, counts)
    frames, segments = widen(frames), widen(segments)
    with autocast_off(frames.device):
        segments, sizes, labels = merge_segments(segments, widen(clip_feats.detach()), widen(sizes.detach()),
                                                 labels, counts)
        valid = sizes > 0  # [B, S]
        own = labels.unsqueeze(2) == torch.arange(segments.shape[1], device=labels.device)  # [B, L, S]
        per_video = (_frame_to_segment(frames, segments, own, valid)
                     + _segment_to_frame(frames, segments, own, valid))  # [B]
    mean_segments = valid.sum(dim=1).to(frames.dtype).mean()
    return per_video.mean(), mean_segments
