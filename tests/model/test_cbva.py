"""model.cbva.cbva_loss against the per-video, per-frame loop oracle."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from bench.bench_ops import aten_op_count
from model import merge
from model.cbva import cbva_loss
from tests.model import oracles

ALL_COUNTS = (5, 8, 12, 20, 32)


def _clip_side(gen: torch.Generator, batch: int, dim: int = 12):
    """OP-ToMe clip features, sizes and labels of random videos (docs/model.md, OP-ToMe)."""
    tokens, sizes, labels = merge.order_preserving_merge(
        torch.randn(batch, 128, dim, generator=gen, dtype=torch.float64))
    return merge.l2_normalize(tokens), sizes, labels


def _encoded(gen: torch.Generator, batch: int, dim: int = 8, scale: float = 0.7):
    """Stand-ins for the projected encoded frames [B, 128, D] and clip tokens [B, 32, D]."""
    frames = scale * torch.randn(batch, 128, dim, generator=gen, dtype=torch.float64)
    segments = scale * torch.randn(batch, 32, dim, generator=gen, dtype=torch.float64)
    return frames.requires_grad_(True), segments.requires_grad_(True)


def _compare_with_oracle(frames, segments, labels, sizes, clip_feats, counts) -> None:
    """Forward values and gradients of the fast loss equal the oracle's."""
    loss, mean_segments = cbva_loss(frames, segments, labels, sizes, clip_feats, counts)
    fast_grads = torch.autograd.grad(loss, (frames, segments))
    want, want_segments = oracles.cbva_loss(frames, segments, labels, sizes, clip_feats, counts)
    slow_grads = torch.autograd.grad(want, (frames, segments))
    assert_close(loss, want, rtol=1e-10, atol=1e-10)
    assert mean_segments.item() == pytest.approx(want_segments)
    for fast, slow in zip(fast_grads, slow_grads, strict=True):
        assert_close(fast, slow, rtol=1e-9, atol=1e-12)


def test_cbva_matches_oracle_with_all_five_counts_in_one_batch():
    gen = torch.Generator().manual_seed(11)
    clip_feats, sizes, labels = _clip_side(gen, batch=6)
    frames, segments = _encoded(gen, batch=6)
    counts = torch.tensor((12, 5, 32, 8, 20, 5))
    _compare_with_oracle(frames, segments, labels, sizes, clip_feats, counts)


def test_cbva_matches_oracle_on_uniform_clips():
    gen = torch.Generator().manual_seed(12)
    clip_feats, sizes, labels = merge.uniform_clips(torch.randn(5, 128, 12, generator=gen, dtype=torch.float64))
    frames, segments = _encoded(gen, batch=5, scale=1.5)
    _compare_with_oracle(frames, segments, labels, sizes, merge.l2_normalize(clip_feats), torch.tensor(ALL_COUNTS))


def test_cbva_matches_oracle_when_every_similarity_ties():
    gen = torch.Generator().manual_seed(13)
    _, sizes, labels = _clip_side(gen, batch=5)
    clip_feats = torch.full((5, 32, 4), 0.5, dtype=torch.float64)  # every cosine is exactly 1
    frames, segments = _encoded(gen, batch=5)
    _compare_with_oracle(frames, segments, labels, sizes, clip_feats, torch.tensor(ALL_COUNTS))


def _videos_with_one_cluster(gen: torch.Generator, cluster_sizes, dim: int = 64) -> torch.Tensor:
    """Per video: `m` clip features close to one direction, the other 32 - m spread at random.
    One component of m tokens gives omega = m (m - 1) / 992."""
    videos = []
    for members in cluster_sizes:
        feats = torch.randn(32, dim, generator=gen, dtype=torch.float64)
        centre = torch.randn(dim, generator=gen, dtype=torch.float64)
        slots = torch.randperm(32, generator=gen)[:members]
        feats[slots] = centre + 0.05 * torch.randn(members, dim, generator=gen, dtype=torch.float64)
        videos.append(feats)
    return merge.l2_normalize(torch.stack(videos))


def test_adaptive_counts_and_loss_match_oracle():
    gen = torch.Generator().manual_seed(14)
    clip_feats = _videos_with_one_cluster(gen, (29, 25, 21, 15, 10))  # omega .82 .60 .42 .21 .09
    ratio = merge.closure_ratio(clip_feats, 0.8)
    counts = merge.segment_count(ratio)
    want = [oracles.segment_count(oracles.closure_ratio(video, 0.8)) for video in clip_feats]
    assert counts.tolist() == want == list(ALL_COUNTS)
    _, sizes, labels = _clip_side(gen, batch=5)
    frames, segments = _encoded(gen, batch=5)
    _compare_with_oracle(frames, segments, labels, sizes, clip_feats, counts)


def test_fixed_cbva_keeps_32_segments_and_no_gradient_reaches_clip_features():
    gen = torch.Generator().manual_seed(15)
    clip_feats, sizes, labels = _clip_side(gen, batch=3)
    clip_feats.requires_grad_(True)
    frames, segments = _encoded(gen, batch=3)
    loss, mean_segments = cbva_loss(frames, segments, labels, sizes, clip_feats, torch.full((3,), 32))
    loss.backward()
    assert mean_segments.item() == 32.0
    assert clip_feats.grad is None
    assert torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0
    assert torch.isfinite(segments.grad).all() and segments.grad.abs().sum() > 0


def test_cbva_float32_gradients_stay_finite_with_padding():
    gen = torch.Generator().manual_seed(16)
    clip_feats, sizes, labels = _clip_side(gen, batch=5)
    frames = torch.randn(5, 128, 16, generator=gen).requires_grad_(True)
    segments = torch.randn(5, 32, 16, generator=gen).requires_grad_(True)
    loss, _ = cbva_loss(frames, segments, labels, sizes.float(), clip_feats.float(), torch.tensor(ALL_COUNTS))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(frames.grad).all() and torch.isfinite(segments.grad).all()


@pytest.mark.parametrize("field, change, message", [
    ("frames", lambda t: t[0], "frames"),
    ("segments", lambda t: t[:, :, :4], "segments"),
    ("labels", lambda t: t[:, :100], "labels"),
    ("labels", lambda t: t.double(), "integer"),
    ("sizes", lambda t: t[:, :31], "sizes"),
    ("clip_feats", lambda t: t[:, :31], "clip_feats"),
    ("counts", lambda t: t[:1], "counts"),
])
def test_cbva_rejects_mismatched_inputs(field, change, message):
    gen = torch.Generator().manual_seed(17)
    clip_feats, sizes, labels = _clip_side(gen, batch=2)
    frames, segments = _encoded(gen, batch=2)
    inputs = dict(frames=frames, segments=segments, labels=labels, sizes=sizes, clip_feats=clip_feats,
                  counts=torch.tensor([5, 32]))
    inputs[field] = change(inputs[field])
    with pytest.raises(ValueError, match=message):
        cbva_loss(**inputs)


def test_cbva_and_closure_ignore_bf16_autocast():
    gen = torch.Generator().manual_seed(18)
    clip_feats = _videos_with_one_cluster(gen, (29, 25, 21, 15, 10)).float()
    _, sizes, labels = _clip_side(gen, batch=5)
    frames = torch.randn(5, 128, 16, generator=gen)
    segments = torch.randn(5, 32, 16, generator=gen)
    counts = merge.segment_count(merge.closure_ratio(clip_feats, 0.8))
    want = cbva_loss(frames, segments, labels, sizes.float(), clip_feats, counts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(merge.segment_count(merge.closure_ratio(clip_feats, 0.8)), counts)
        got = cbva_loss(frames, segments, labels, sizes.float(), clip_feats, counts)
    assert got[0].dtype == torch.float32
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


def test_number_of_aten_ops_does_not_grow_with_the_batch():
    assert aten_op_count(2) == aten_op_count(16)
