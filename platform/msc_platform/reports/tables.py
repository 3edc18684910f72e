"""Numeric result tables of an ablation grid, a sensitivity grid or a plain sweep.

Input: RunRecords (see `run_records`) and a `ranks(run_id) -> DataFrame | None` callable for
the per-query ranks. Output: pandas DataFrames with one row per ablation row (mean and sample
std over seeds, ddof=1, NaN when one seed), Δ SumR against the baseline row and the paired
bootstrap p-value (see `bootstrap`). Only complete runs are aggregated; `incomplete_table`
lists the others. Rendering to Markdown/LaTeX lives in `table_render`.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from msc_platform.reports.records import DIAGNOSTIC_NAMES, RECALL_NAMES, SEED_PARAM, RunRecord
from msc_platform.reports.statistics import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    mean_contribution_per_query,
    paired_bootstrap_p,
    paired_differences,
)

RanksFn = Callable[[str], "pd.DataFrame | None"]

FACTOR_SEPARATOR = "__"  # sensitivity rows are named <factor>__<value>, e.g. sim_thr__0.6
DEFAULT_ROW = "default"  # a sensitivity grid's shared reference point: joins every factor group
ROW_LABELS = {
    "a_baseline": "(a) Baseline (base loss, uniform clips)",
    "b_tcp": "(b) + TCP",
    "c_cbva_uniform": "(c) + CBVA, uniform clips",
    "d_optome": "(d) + OP-ToMe clips",
    "e_adaptive": "(e) + adaptive CBVA (MSC)",
}
PAPER_SUMR_QVHIGHLIGHTS = {  # paper Tab. 1 (docs/model.md, Ablation rows)
    "a_baseline": 225.5,
    "b_tcp": 230.6,
    "c_cbva_uniform": 231.0,
    "d_optome": 232.5,
    "e_adaptive": 234.6,
}
QVHIGHLIGHTS_COLLECTIONS = ("qvhighlight", "qvhighlights")
COLLECTION_PARAM = "data.collection"
IGNORED_PARAM_PREFIXES = ("tracking.",)
KEYS_FIRST = ("model.rkd_d_coef", "model.rkd_a_coef")


def table_kind(records: Iterable[RunRecord]) -> str:
    """'sweep' when no run has a row tag, 'sensitivity' when every row is <factor>__<value>
    (or the shared 'default' row), else 'ablation'."""
    rows = {record.row for record in records if record.row}
    if not rows:
        return "sweep"
    factor_named = {row for row in rows if FACTOR_SEPARATOR in row}
    if factor_named and factor_named | {DEFAULT_ROW} >= rows:
        return "sensitivity"
    return "ablation"


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1); std is NaN for fewer than two values.

    Raises ValueError for no values.
    """
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        raise ValueError("mean_std: no values")
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return float(array.mean()), std


def complete_rows(records: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    """Complete runs grouped by row name, rows sorted by name, runs by seed."""
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        if record.complete and record.row is not None:
            groups.setdefault(record.row, []).append(record)
    return {row: sorted(groups[row], key=lambda r: (r.seed is None, r.seed)) for row in sorted(groups)}


def choose_baseline(rows: Iterable[str], requested: str | None = None) -> str:
    """The baseline row: `requested`, else the first row whose name contains 'baseline',
    else the first row. Raises ValueError when `requested` is not a row or there are no rows."""
    rows = list(rows)
    if not rows:
        raise ValueError("no complete row to use as baseline")
    if requested is not None:
        if requested not in rows:
            raise ValueError(f"baseline row {requested!r} has no complete run; rows: {', '.join(rows)}")
        return requested
    return next((row for row in rows if "baseline" in row), rows[0])


def _stats_columns(runs: list[RunRecord], names: Iterable[str]) -> dict[str, float]:
    columns: dict[str, float] = {}
    for name in names:
        values = [run.metric(f"best/{name}") for run in runs]
        values = [value for value in values if value is not None]
        mean, std = mean_std(values) if values else (math.nan, math.nan)
        columns[f"{name}_mean"], columns[f"{name}_std"] = mean, std
    return columns


def row_p_value(row_runs: list[RunRecord], baseline_runs: list[RunRecord], ranks: RanksFn,
                resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> float:
    """Paired-bootstrap p-value of the row against the baseline; NaN when a run has no ranks."""
    row_tables = [ranks(run.run_id) for run in row_runs]
    base_tables = [ranks(run.run_id) for run in baseline_runs]
    if any(table is None for table in row_tables + base_tables):
        return math.nan
    differences = paired_differences(mean_contribution_per_query(row_tables),
                                     mean_contribution_per_query(base_tables))
    return paired_bootstrap_p(differences, resamples, seed)


def _compared_rows(groups: dict[str, list[RunRecord]], order: list[str], baseline: str, ranks: RanksFn,
                   resamples: int, seed: int) -> list[dict]:
    """One dict per row: seeds, recall stats, Δ SumR and p-value against `baseline`."""
    base_stats = _stats_columns(groups[baseline], ["SumR"])
    out = []
    for row in order:
        entry = {"row": row, "seeds": len(groups[row]), **_stats_columns(groups[row], RECALL_NAMES)}
        entry["delta_SumR"] = entry["SumR_mean"] - base_stats["SumR_mean"]
        is_base = row == baseline
        entry["p_value"] = math.nan if is_base else row_p_value(groups[row], groups[baseline], ranks, resamples, seed)
        entry["is_baseline"] = is_base
        out.append(entry)
    return out


def ablation_table(records: list[RunRecord], ranks: RanksFn, baseline: str | None = None,
                   resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Tab. 1-style table: one row per ablation row, compared with the baseline row.

    Adds the paper's QVHighlights SumR as `paper_SumR` when every run used that collection.
    Raises ValueError when there is no complete row or the baseline is unknown.
    """
    groups = complete_rows(records)
    base = choose_baseline(groups, baseline)
    entries = _compared_rows(groups, list(groups), base, ranks, resamples, seed)
    table = pd.DataFrame(entries)
    table.insert(0, "group", "")
    table.insert(2, "label", [ROW_LABELS.get(row, row) for row in table["row"]])
    if _is_qvhighlights(records):
        table["paper_SumR"] = [PAPER_SUMR_QVHIGHLIGHTS.get(row, math.nan) for row in table["row"]]
    return table


def _is_qvhighlights(records: list[RunRecord]) -> bool:
    collections = {record.params.get(COLLECTION_PARAM) for record in records if record.complete}
    return bool(collections) and collections <= set(QVHIGHLIGHTS_COLLECTIONS)


def sensitivity_table(records: list[RunRecord], ranks: RanksFn,
                      resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Tab. 3-style table: rows grouped by factor (`<factor>__<value>` row names), one row per
    value, each compared with its factor's default: the `default` row (which joins every group)
    when the grid has one, else the row holding the value most runs of the grid use (the other
    factors' rows keep the default). Raises ValueError when there is no complete row."""
    groups = complete_rows(records)
    if not groups:
        raise ValueError("no complete row to tabulate")
    common = modal_params([run for runs in groups.values() for run in runs])
    frames = []
    for factor, rows in factor_rows(groups).items():
        keys = sorted(varied_keys([run for row in rows for run in groups[row]]), key=_key_order)
        values = {row: _row_value(groups[row][0], keys) for row in rows}
        order = sorted(rows, key=lambda row: _value_sort_key(values[row]))
        base = DEFAULT_ROW if DEFAULT_ROW in rows else next(
            (row for row in order if all(groups[row][0].params.get(k) == common.get(k) for k in keys)), order[0])
        frame = pd.DataFrame(_compared_rows(groups, order, base, ranks, resamples, seed))
        frame.insert(0, "group", factor + (f" ({':'.join(keys)})" if keys else ""))
        frame.insert(2, "label", [values[row] for row in order])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _key_order(key: str) -> tuple[int, str]:
    """Keys of KEYS_FIRST in that order (the paper writes rkd_d_coef:rkd_a_coef), then the rest."""
    return (KEYS_FIRST.index(key), "") if key in KEYS_FIRST else (len(KEYS_FIRST), key)


def _row_value(run: RunRecord, keys: list[str]) -> str:
    """The row's value of its factor's keys joined by ':'; the row name's suffix when no key varies."""
    if not keys:
        return run.row.split(FACTOR_SEPARATOR, 1)[-1] if run.row else ""
    return ":".join(run.params.get(key, "?") for key in keys)


def factor_rows(groups: dict[str, list[RunRecord]]) -> dict[str, list[str]]:
    """Row names grouped by their factor prefix (text before `FACTOR_SEPARATOR`); the
    `default` row, when present, is added to every group."""
    factors: dict[str, list[str]] = {}
    for row in groups:
        if row != DEFAULT_ROW:
            factors.setdefault(row.split(FACTOR_SEPARATOR, 1)[0], []).append(row)
    if DEFAULT_ROW in groups:
        for rows in factors.values():
            rows.append(DEFAULT_ROW)
    return factors


def _value_sort_key(value: str) -> tuple:
    parts = value.split(":")
    try:
        return (0, tuple(float(part) for part in parts))
    except ValueError:
        return (1, tuple(parts))


def modal_params(runs: list[RunRecord]) -> dict[str, str]:
    """For each param, the value most runs use."""
    counters: dict[str, Counter] = {}
    for run in runs:
        for key, value in run.params.items():
            counters.setdefault(key, Counter())[value] += 1
    return {key: counter.most_common(1)[0][0] for key, counter in counters.items()}


def varied_keys(runs: list[RunRecord]) -> list[str]:
    """Config params that differ between `runs`, without the seed, tracking keys and
    per-run identifiers (text values that are all distinct, such as output paths)."""
    if len(runs) < 2:
        return []
    keys = sorted({key for run in runs for key in run.params})
    varied = []
    for key in keys:
        if key == SEED_PARAM or key.startswith(IGNORED_PARAM_PREFIXES):
            continue
        values = [run.params.get(key) for run in runs]
        distinct = set(values)
        if len(distinct) < 2:
            continue
        if len(distinct) == len(runs) > 2 and not all(is_number(v) for v in values):
            continue
        varied.append(key)
    return varied


def is_number(value: str | None) -> bool:
    """True when `value` parses as a float."""
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def diagnostics_table(records: list[RunRecord], main: pd.DataFrame) -> pd.DataFrame:
    """Diff.Norm (text, video) and Spearman per row of `main`, mean and std over seeds."""
    groups = complete_rows(records)
    entries = []
    for group, row, label in main[["group", "row", "label"]].itertuples(index=False):
        runs = groups[row]
        entries.append({"group": group, "row": row, "label": label, "seeds": len(runs),
                        **_stats_columns(runs, DIAGNOSTIC_NAMES)})
    return pd.DataFrame(entries)


def sweep_table(records: list[RunRecord]) -> pd.DataFrame:
    """Plain sweep: one row per complete trial with its varied params and best metrics,
    best SumR first. Raises ValueError when no trial is complete."""
    runs = [record for record in records if record.complete]
    if not runs:
        raise ValueError("no complete trial to tabulate")
    keys = varied_keys(runs)
    entries = []
    for run in runs:
        entry = {"trial": run.trial_id or run.run_name, "run_id": run.run_id}
        entry.update({key: run.params.get(key) for key in keys})
        for name in RECALL_NAMES + DIAGNOSTIC_NAMES + ("best_epoch",):
            value = run.metric(name if name == "best_epoch" else f"best/{name}")
            entry[name] = math.nan if value is None else value
        entries.append(entry)
    table = pd.DataFrame(entries).sort_values("SumR", ascending=False, kind="stable")
    return table.reset_index(drop=True)


def incomplete_table(records: list[RunRecord]) -> pd.DataFrame:
    """Every run left out of the averages, with its status and the reason."""
    columns = ["run_id", "run_name", "row", "seed", "trial", "status", "problem"]
    entries = [[r.run_id, r.run_name, r.row, r.seed, r.trial_id, r.status, r.problem]
               for r in records if not r.complete]
    return pd.DataFrame(entries, columns=columns)
