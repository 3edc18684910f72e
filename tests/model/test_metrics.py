"""Metrics against loop oracles (ranks, recall, Diff.Norm) and scipy (Spearman)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from model.metrics import diff_norm, gt_ranks, recall_at_k, recall_from_ranks, spearman_collapse
from tests.model.batch_factory import one_thread
from tests.model.loss_oracles import diff_norm_loop, gt_ranks_loop

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def test_gt_ranks_match_the_sorting_oracle_with_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40, 12), generator=generator).float()  # many ties
    gt = torch.randint(0, 12, (40,), generator=generator)
    assert gt_ranks(scores, gt).tolist() == gt_ranks_loop(scores, gt.tolist())


def test_constant_and_nan_scores_rank_last():
    scores = torch.zeros(3, 5)
    scores[2, 1] = float("nan")
    ranks = gt_ranks(scores, torch.tensor([0, 4, 1]))
    assert ranks.tolist() == [5, 5, 5]


def test_recall_percentages_and_sumr():
    ranks = torch.tensor([1, 2, 6, 11, 101, 100, 5, 10])
    result = recall_from_ranks(ranks)
    assert result == {"R@1": 12.5, "R@5": 37.5, "R@10": 62.5, "R@100": 87.5, "SumR": 200.0}
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.2, 0.1], [0.1, 0.5, 0.4]])
    recall = recall_at_k(scores, torch.tensor([0, 1, 2]), ks=(1, 2))
    assert recall["R@1"] == pytest.approx(100 / 3) and recall["R@2"] == pytest.approx(100.0)
    assert recall["SumR"] == pytest.approx(400 / 3)


@pytest.mark.parametrize(("args", "match"), [
    ((torch.zeros(3, 4), torch.zeros(2, dtype=torch.long)), "expected scores"),
    ((torch.zeros(3, 4), torch.tensor([0, 1, 4])), "outside"),
])
def test_gt_ranks_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        gt_ranks(*args)


def test_recall_rejects_empty_ranks():
    with pytest.raises(ValueError, match="0 queries"):
        recall_from_ranks(torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("seed", [0, 1])
def test_diff_norm_matches_the_pairwise_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 5])  # a singleton group too
    centres = torch.randn(6, 8, generator=generator)
    feats = centres[groups] + 0.7 * torch.randn(len(groups), 8, generator=generator) + 0.5
    got = diff_norm(feats, groups)
    assert got.dim() == 0
    assert float(got) == pytest.approx(diff_norm_loop(feats, groups.tolist()), rel=1e-5)


def test_diff_norm_rejects_groups_without_pairs():
    with pytest.raises(ValueError, match="no group has two members"):
        diff_norm(torch.randn(4, 3), torch.arange(4))


def test_diff_norm_handles_ten_thousand_queries():
    feats = torch.randn(10_895, 384)
    groups = torch.arange(10_895) // 5
    assert bool(torch.isfinite(diff_norm(feats, groups)))


def _pair_cosines(x):
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows, cols = np.triu_indices(len(x), k=1)
    return (unit @ unit.T)[rows, cols]


def test_spearman_matches_scipy():
    generator = torch.Generator().manual_seed(2)
    teacher = torch.randn(30, 16, generator=generator)
    student = teacher[:, :8] + 0.8 * torch.randn(30, 8, generator=generator)
    expected = 100 * spearmanr(_pair_cosines(student.double().numpy()),
                               _pair_cosines(teacher.double().numpy())).statistic
    assert float(spearman_collapse(student, teacher)) == pytest.approx(expected, rel=1e-4)


def test_spearman_averages_tied_ranks_like_scipy():
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
    teacher = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    expected = 100 * spearmanr(_pair_cosines(base.double().numpy()),
                               _pair_cosines(teacher.double().numpy())).statistic
    assert float(spearman_collapse(base, teacher)) == pytest.approx(expected, rel=1e-4)


def test_spearman_subsample_is_deterministic_and_exact_below_the_limit():
    generator = torch.Generator().manual_seed(4)
    teacher = torch.randn(60, 6, generator=generator)
    student = teacher + torch.randn(60, 6, generator=generator)
    sampled = spearman_collapse(student, teacher, max_items=20)
    assert torch.equal(sampled, spearman_collapse(student, teacher, max_items=20))
    assert torch.equal(spearman_collapse(student, teacher, max_items=None),
                       spearman_collapse(student, teacher, max_items=60))
    assert float(spearman_collapse(teacher, teacher)) == pytest.approx(100.0)


def test_spearman_rejects_mismatched_queries():
    with pytest.raises(ValueError, match="spearman_collapse"):
        spearman_collapse(torch.randn(5, 3), torch.randn(6, 3))
