"""model.merge against the loop oracles of tests/model/oracles.py."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from model import merge
from tests.model import oracles


def _codebook_metric(gen: torch.Generator, count: int, dim: int, batch: int, length: int) -> torch.Tensor:
    """Metric rows drawn from a few {-1, 0, 1} vectors with 4 non-zeros: cosines are exact
    multiples of 1/4, so many edges tie exactly in both the fast op and the oracle."""
    book = torch.zeros(count, dim, dtype=torch.float64)
    for row in range(count):
        slots = torch.randperm(dim, generator=gen)[:4]
        book[row, slots] = torch.randint(0, 2, (4,), generator=gen).double() * 2 - 1
    return book[torch.randint(0, count, (batch, length), generator=gen)]


def _padded_batch(gen: torch.Generator, batch: int, length: int = 32, frames: int = 48, ties: bool = False):
    """Random padded batch: valid tokens first, garbage padding with size 0 after them."""
    valid = torch.randint(2, length + 1, (batch,), generator=gen)  # [B]
    live = torch.arange(length) < valid.unsqueeze(1)  # [B, N]
    x = torch.randn(batch, length, 6, generator=gen, dtype=torch.float64)
    if ties:
        metric = _codebook_metric(gen, 3, 8, batch, length)
    else:
        metric = torch.randn(batch, length, 5, generator=gen, dtype=torch.float64)
    sizes = torch.randint(1, 5, (batch, length), generator=gen).double() * live
    labels = (torch.rand(batch, frames, generator=gen, dtype=torch.float64) * valid.unsqueeze(1)).long()
    targets = (torch.rand(batch, generator=gen, dtype=torch.float64) * valid).long() + 1  # [B] in 1..valid
    return x, metric, sizes, labels.sort(dim=1).values, targets


def _assert_same_merge(fast, slow) -> None:
    for got, want in zip(fast[:3], slow[:3], strict=True):
        assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(fast[3], slow[3])


@pytest.mark.parametrize("n", [1, 2, 5, 31, 64, 100, 127, 128, 129, 200, 255, 256, 257, 333, 1000])
def test_fixed_length_matches_oracle(n):
    frames = torch.randn(n, 7, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    out = merge.fixed_length(frames)
    assert out.shape == (128, 7)
    assert_close(out, oracles.fixed_length(frames), rtol=1e-10, atol=1e-10)


def test_fixed_length_keeps_float32_and_other_lengths():
    frames = torch.randn(77, 3)
    out = merge.fixed_length(frames, length=16)
    assert out.dtype == torch.float32
    assert_close(out, oracles.fixed_length(frames, 16))


@pytest.mark.parametrize("bad, message", [(torch.zeros(0, 4), "empty"), (torch.zeros(5), "\\[n, D\\]")])
def test_fixed_length_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        merge.fixed_length(bad)


def test_l2_normalize_uses_the_spec_epsilon():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert_close(merge.l2_normalize(x), torch.tensor([[3.0, 4.0], [0.0, 0.0]]) / torch.tensor([[5.00001], [1.0]]))


def test_uniform_clips_matches_oracle():
    x = torch.randn(3, 128, 5, dtype=torch.float64)
    tokens, sizes, labels = merge.uniform_clips(x)
    for video in range(3):
        want = oracles.uniform_clips(x[video])
        assert_close(tokens[video], want[0])
        assert_close(sizes[video], want[1])
        assert torch.equal(labels[video], want[2])


def test_uniform_clips_rejects_length_not_multiple_of_count():
    with pytest.raises(ValueError, match="multiple"):
        merge.uniform_clips(torch.zeros(1, 130, 4))


def _check_optome(x: torch.Tensor, targets=(80, 52, 32)) -> None:
    tokens, sizes, labels = merge.order_preserving_merge(x, targets)
    for video in range(x.shape[0]):
        want_tokens, want_sizes, want_labels = oracles.order_preserving_merge(x[video], targets)
        assert_close(tokens[video], want_tokens, rtol=1e-12, atol=1e-12)
        assert_close(sizes[video], want_sizes)
        assert torch.equal(labels[video], want_labels)
    assert torch.all(sizes.sum(dim=1) == x.shape[1])
    assert torch.all(labels.diff(dim=1) >= 0)
    assert torch.all(labels[:, -1] == targets[-1] - 1)


def test_order_preserving_merge_matches_oracle_on_random_videos():
    _check_optome(torch.randn(6, 128, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64))


def test_order_preserving_merge_breaks_ties_by_pair_index():
    gen = torch.Generator().manual_seed(2)
    integer = torch.randint(0, 3, (5, 128, 4), generator=gen).double()  # exact, many equal scores
    _check_optome(integer, targets=(96,))
    identical = torch.ones(2, 128, 4, dtype=torch.float64)  # every score ties at every level
    _check_optome(identical)
    tokens, sizes, labels = merge.order_preserving_merge(identical)
    # all ties: each level merges its first pairs -> 12 x 8 frames, 2 x 4, 6 x 2, 12 x 1
    want = [8.0] * 12 + [4.0] * 2 + [2.0] * 6 + [1.0] * 12
    assert sizes[0].tolist() == want


@pytest.mark.parametrize("ties", [False, True])
def test_bipartite_merge_matches_greedy_oracle(ties):
    gen = torch.Generator().manual_seed(3 + ties)
    for _ in range(12):
        x, metric, sizes, labels, targets = _padded_batch(gen, batch=12, ties=ties)
        fast = merge.bipartite_merge(x, metric, sizes, labels, targets)
        slow = oracles.bipartite_merge_batch(x, metric, sizes, labels, targets.tolist())
        _assert_same_merge(fast, slow)
        quota = int(((sizes > 0).sum(dim=1) - targets).max())  # rounds enough for the first picks
        _assert_same_merge(merge.bipartite_merge(x, metric, sizes, labels, targets, max_merges=quota), slow)


def test_bipartite_merge_odd_length_and_int_target():
    gen = torch.Generator().manual_seed(5)
    x, metric, sizes, labels, _ = _padded_batch(gen, batch=10, length=13, frames=20)
    fast = merge.bipartite_merge(x, metric, sizes, labels, 4)
    slow = oracles.bipartite_merge_batch(x, metric, sizes, labels, [4] * 10)
    _assert_same_merge(fast, slow)
    as_tensor = merge.bipartite_merge(x, metric, sizes, labels, torch.full((10,), 4))
    _assert_same_merge(fast, as_tensor)


def test_bipartite_merge_is_greedy_not_per_a_argmax():
    # angles a0 0, b1 20, a2 45, b3 -30 degrees: edges by cosine (a0,b1) > (a2,b1) > (a0,b3) > (a2,b3).
    # Greedy takes (a0,b1), then (a2,b3); ToMe's per-A argmax would send a0 and a2 both to b1.
    angles = torch.deg2rad(torch.tensor([0.0, 20.0, 45.0, -30.0], dtype=torch.float64))
    metric = torch.stack([angles.cos(), angles.sin()], dim=-1).unsqueeze(0)  # [1, 4, 2]
    x = torch.arange(4, dtype=torch.float64).view(1, 4, 1)
    ones = torch.ones(1, 4, dtype=torch.float64)
    new_x, _, sizes, labels = merge.bipartite_merge(x, metric, ones, torch.arange(4).view(1, 4), 2)
    assert labels.tolist() == [[0, 0, 1, 1]]
    assert sizes.tolist() == [[2.0, 2.0, 0.0, 0.0]]
    assert new_x.flatten().tolist() == [0.5, 2.5, 0.0, 0.0]
    _, _, sizes, labels = merge.bipartite_merge(x, metric, ones, torch.arange(4).view(1, 4), 3)
    assert labels.tolist() == [[0, 0, 1, 2]]


def test_bipartite_merge_leaves_videos_at_their_target_untouched():
    gen = torch.Generator().manual_seed(6)
    x, metric, sizes, labels, _ = _padded_batch(gen, batch=8)
    x = x * (sizes > 0).unsqueeze(-1)  # zero padding, as the op writes it
    metric = metric * (sizes > 0).unsqueeze(-1)
    unchanged = merge.bipartite_merge(x, metric, sizes, labels, (sizes > 0).sum(dim=1))
    for got, want in zip(unchanged, (x, metric, sizes, labels), strict=True):
        assert torch.equal(got, want)


def test_bipartite_merge_gradients_match_oracle():
    gen = torch.Generator().manual_seed(7)
    x, metric, sizes, labels, targets = _padded_batch(gen, batch=6)
    weights = torch.randn(6, 32, 6, generator=gen, dtype=torch.float64)
    fast_x = x.clone().requires_grad_(True)
    slow_x = x.clone().requires_grad_(True)
    (merge.bipartite_merge(fast_x, metric, sizes, labels, targets)[0] * weights).sum().backward()
    (oracles.bipartite_merge_batch(slow_x, metric, sizes, labels, targets.tolist())[0] * weights).sum().backward()
    assert_close(fast_x.grad, slow_x.grad, rtol=1e-12, atol=1e-12)


def test_bipartite_merge_rejects_mismatched_shapes():
    x = torch.zeros(2, 8, 4)
    with pytest.raises(ValueError, match="metric"):
        merge.bipartite_merge(x, torch.zeros(2, 7, 4), torch.ones(2, 8), torch.zeros(2, 8, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="target"):
        merge.bipartite_merge(x, x, torch.ones(2, 8), torch.zeros(2, 8, dtype=torch.long), torch.ones(3))


def _clustered(gen: torch.Generator, batch: int, length: int = 32, dim: int = 12) -> torch.Tensor:
    """Videos made of a random number of tight clusters, so omega spreads over [0, 1]."""
    feats = []
    for _ in range(batch):
        centres = torch.randn(int(torch.randint(1, 12, (1,), generator=gen)), dim, generator=gen, dtype=torch.float64)
        pick = torch.randint(0, centres.shape[0], (length,), generator=gen)
        feats.append(centres[pick] + 0.3 * torch.randn(length, dim, generator=gen, dtype=torch.float64))
    return merge.l2_normalize(torch.stack(feats))


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.85])
def test_closure_ratio_matches_bfs_oracle(threshold):
    feats = _clustered(torch.Generator().manual_seed(8), batch=16)
    fast = merge.closure_ratio(feats, threshold)
    slow = torch.tensor([oracles.closure_ratio(video, threshold) for video in feats], dtype=torch.float64)
    assert_close(fast, slow)
    assert fast.unique().numel() > 3  # the inputs really spread


def test_closure_ratio_edge_needs_cosine_strictly_above_threshold():
    gen = torch.Generator().manual_seed(9)
    feats = _codebook_metric(gen, 6, 8, 8, 16)  # cosines are exact multiples of 1/4
    for threshold in (0.0, 0.25, 0.5):
        fast = merge.closure_ratio(feats, threshold)
        slow = torch.tensor([oracles.closure_ratio(video, threshold) for video in feats], dtype=torch.float64)
        assert_close(fast, slow)


def test_closure_ratio_on_a_chain_needs_every_squaring():
    # tokens 0-1-2-...-31 linked only to neighbours: full closure needs paths of length 31
    angles = torch.arange(32, dtype=torch.float64) * 0.1
    feats = torch.stack([angles.cos(), angles.sin()], dim=-1).unsqueeze(0)  # neighbours: cos 0.995
    assert_close(merge.closure_ratio(feats, 0.99), torch.tensor([1.0], dtype=torch.float64))
    assert oracles.closure_ratio(feats[0], 0.99) == 1.0


def test_segment_count_thresholds():
    ratio = torch.tensor([1.0, 0.8, 0.79, 0.6, 0.59, 0.4, 0.39, 0.2, 0.19, 0.0])
    want = [oracles.segment_count(float(r)) for r in ratio]
    assert merge.segment_count(ratio).tolist() == want == [5, 5, 8, 8, 12, 12, 20, 20, 32, 32]
    assert merge.segment_count(ratio).dtype == torch.long
