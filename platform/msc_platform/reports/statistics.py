"""Paired bootstrap over queries: is an ablation row's SumR really above the baseline's?

Each query contributes `sum_K 100 * [rank <= K]` (K = 1, 5, 10, 100) to SumR, so SumR is the
mean of these per-query contributions. For a row and the baseline, the contributions are first
averaged over seeds per query (queries matched by `cap_id`), giving one difference `d_q` per
query. Queries are resampled with replacement B times; the p-value is one-sided:

    p = fraction of resamples whose mean difference is <= 0

i.e. the evidence against "the row is not better than the baseline". A small p says the row's
SumR gain is unlikely to come from which queries happened to be in the evaluation set.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

RECALL_KS = (1, 5, 10, 100)
DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
_MAX_CELLS_PER_CHUNK = 4_000_000
_ZERO_TOLERANCE = 1e-9  # seed-averaged contributions are thirds of 100: ties must stay ties


def sumr_contributions(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS) -> np.ndarray:
    """Per-query SumR contribution `sum_K 100 * [rank <= K]` for 1-based ranks.

    Raises ValueError when a rank is below 1.
    """
    ranks = np.asarray(ranks)  # [Q]
    if ranks.size and ranks.min() < 1:
        raise ValueError(f"ranks: must be >= 1 (1 = best), got minimum {ranks.min()}")
    hits = ranks[:, None] <= np.asarray(ks)[None, :]  # [Q, K]
    return 100.0 * hits.sum(axis=1)


def mean_contribution_per_query(rank_tables: Sequence[pd.DataFrame], rank_column: str = "rank_fused") -> pd.Series:
    """Average the per-query SumR contribution over seeds, indexed by `cap_id`.

    Each table holds one seed's `cap_id` and `rank_column`. Only queries present in every
    table are kept. Raises ValueError for no tables, a missing column or duplicate cap_ids.
    """
    if not rank_tables:
        raise ValueError("rank tables: need at least one seed's ranks")
    per_seed = []
    for index, table in enumerate(rank_tables):
        for column in ("cap_id", rank_column):
            if column not in table.columns:
                raise ValueError(f"rank table {index}: missing column {column!r}")
        if table["cap_id"].duplicated().any():
            raise ValueError(f"rank table {index}: duplicate cap_id values")
        contributions = sumr_contributions(table[rank_column].to_numpy())
        per_seed.append(pd.Series(contributions, index=table["cap_id"].astype(str).to_numpy()))
    stacked = pd.concat(per_seed, axis=1, join="inner")  # [Q, seeds]
    return stacked.mean(axis=1)


def paired_differences(row: pd.Series, baseline: pd.Series) -> np.ndarray:
    """Per-query `row - baseline` over the cap_ids both have, in sorted cap_id order.

    Raises ValueError when the two share no query.
    """
    shared = row.index.intersection(baseline.index).sort_values()
    if len(shared) == 0:
        raise ValueError("paired bootstrap: the row and the baseline share no cap_id")
    return row.loc[shared].to_numpy(dtype=float) - baseline.loc[shared].to_numpy(dtype=float)


def p_value_from_indices(differences: np.ndarray, indices: np.ndarray) -> float:
    """One-sided p: fraction of resamples (rows of `indices`) whose mean difference is <= 0.

    `indices[b, j]` is the j-th query drawn in resample b. Raises ValueError on empty input.
    """
    if differences.size == 0 or indices.size == 0:
        raise ValueError("paired bootstrap: need at least one query and one resample")
    return _count_at_or_below(differences, indices) / indices.shape[0]


def _count_at_or_below(differences: np.ndarray, indices: np.ndarray) -> int:
    """How many resamples (rows of `indices`) have a mean difference <= 0."""
    resampled_means = differences[indices].mean(axis=1)  # [B]
    return int(np.count_nonzero(resampled_means <= _ZERO_TOLERANCE))


def paired_bootstrap_p(
    differences: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> float:
    """One-sided paired-bootstrap p-value of `mean(differences) > 0` (see the module doc).

    Draws `resamples` index sets of len(differences) queries with replacement from
    `numpy.random.default_rng(seed)` (int32 indices), in chunks that keep memory
    bounded. Raises ValueError on empty input.
    """
    differences = np.asarray(differences, dtype=float)  # [Q]
    if differences.size == 0 or resamples < 1:
        raise ValueError("paired bootstrap: need at least one query and one resample")
    rng = np.random.default_rng(seed)
    queries = differences.size
    chunk = max(1, _MAX_CELLS_PER_CHUNK // queries)
    at_or_below = 0
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        indices = rng.integers(0, queries, size=(size, queries), dtype=np.int32)  # [b, Q]
        at_or_below += _count_at_or_below(differences, indices)
    return at_or_below / resamples
