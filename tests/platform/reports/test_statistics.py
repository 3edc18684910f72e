"""The paired bootstrap against hand computations and an exact enumeration on tiny examples."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from msc_platform.reports import statistics as bootstrap
from msc_platform.reports.statistics import (
    mean_contribution_per_query,
    p_value_from_indices,
    paired_bootstrap_p,
    paired_differences,
    sumr_contributions,
)


def test_sumr_contribution_counts_each_k_the_rank_is_within():
    assert sumr_contributions(np.array([1, 2, 5, 6, 10, 11, 100, 101])).tolist() == [
        400, 300, 300, 200, 200, 100, 100, 0]


def test_contribution_mean_matches_queries_by_cap_id_and_keeps_shared_queries():
    seed_a = pd.DataFrame({"cap_id": ["x", "y", "z"], "rank_fused": [1, 50, 200]})
    seed_b = pd.DataFrame({"cap_id": ["z", "x", "w"], "rank_fused": [3, 20, 1]})  # other order, y gone, w new
    mean = mean_contribution_per_query([seed_a, seed_b])
    assert mean.sort_index().to_dict() == {"x": (400 + 100) / 2, "z": (0 + 300) / 2}


def test_paired_differences_align_on_cap_id():
    row = pd.Series({"b": 300.0, "a": 100.0, "c": 0.0})
    base = pd.Series({"a": 200.0, "b": 100.0})
    assert paired_differences(row, base).tolist() == [-100.0, 200.0]  # a, b
    with pytest.raises(ValueError, match="share no cap_id"):
        paired_differences(row, pd.Series({"q": 1.0}))


def test_p_value_from_given_indices_equals_a_hand_loop():
    differences = np.array([100.0, -100.0, 0.0, 300.0])
    indices = np.array([[0, 1, 1, 2], [3, 3, 1, 1], [1, 1, 1, 0], [2, 2, 2, 2], [1, 2, 1, 2]])
    by_hand = 0
    for draw in indices:
        total = sum(differences[j] for j in draw)
        by_hand += total <= 0
    assert p_value_from_indices(differences, indices) == by_hand / len(indices) == 4 / 5


def test_seeded_bootstrap_equals_hand_loop_over_the_same_draws():
    differences = np.array([2.0, -1.0, 0.5, -3.0, 1.0])
    resamples, seed = 300, 11
    draws = np.random.default_rng(seed).integers(0, len(differences), size=(resamples, len(differences)),
                                                 dtype=np.int32)
    by_hand = sum(np.mean([differences[j] for j in draw]) <= 0 for draw in draws) / resamples
    assert paired_bootstrap_p(differences, resamples, seed) == pytest.approx(by_hand)
    assert paired_bootstrap_p(differences, resamples, seed) == paired_bootstrap_p(differences, resamples, seed)


@pytest.mark.parametrize("chunk_cells", [4 * 7, bootstrap._MAX_CELLS_PER_CHUNK])
def test_bootstrap_p_approaches_the_exact_resampling_probability(monkeypatch, chunk_cells):
    monkeypatch.setattr(bootstrap, "_MAX_CELLS_PER_CHUNK", chunk_cells)
    differences = np.array([300.0, -100.0, -100.0, 0.0])
    outcomes = [np.mean(differences[list(draw)]) <= 0 for draw in itertools.product(range(4), repeat=4)]
    exact = float(np.mean(outcomes))  # all 4**4 equally likely resamples
    assert paired_bootstrap_p(differences, 20_000, seed=0) == pytest.approx(exact, abs=0.015)


def test_ties_count_as_not_better_despite_rounding():
    thirds = np.array([100.0 / 3, -100.0 / 3])
    assert paired_bootstrap_p(thirds, 4000, seed=1) == pytest.approx(0.75, abs=0.03)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="ranks: must be >= 1"):
        sumr_contributions(np.array([0, 3]))
    with pytest.raises(ValueError, match="missing column 'rank_fused'"):
        mean_contribution_per_query([pd.DataFrame({"cap_id": ["a"]})])
    with pytest.raises(ValueError, match="duplicate cap_id"):
        mean_contribution_per_query([pd.DataFrame({"cap_id": ["a", "a"], "rank_fused": [1, 2]})])
    with pytest.raises(ValueError, match="at least one query"):
        paired_bootstrap_p(np.array([]))
