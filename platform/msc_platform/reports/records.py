"""Read the runs of a sweep or ablation grid back from MLflow (any tracking URI).

Only the MLflow client is used, so the same code reads a local SQLite store and a tracking
server. A run is *complete* when its status is FINISHED and every `best/` retrieval metric is
logged; every other run carries a `problem` string and is listed, never averaged in.
"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from msc_platform.names import (
    BEST_PREFIX,
    ERROR_TAG,
    EVAL_ROLE,
    PARENT_RUN_TAG,
    RANKS_ARTIFACT,
    ROLE_TAG,
    ROW_TAG,
    SEED_TAG,
    STOP_REASON_TAG,
    SWEEP_PARENT_ROLE,
    TRIAL_TAG,
)

RECALL_NAMES = ("R@1", "R@5", "R@10", "R@100", "SumR")
DIAGNOSTIC_NAMES = ("diffnorm_text", "diffnorm_video", "spearman")
REQUIRED_METRICS = tuple(f"{BEST_PREFIX}{name}" for name in RECALL_NAMES)
SEED_PARAM = "train.seed"
_PAGE_SIZE = 1000
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class RunLookupError(LookupError):
    """The experiment or parent run asked for does not exist in the tracking store."""


def metric_key(name: str) -> str:
    """Canonical form of a metric name: lowercase, only letters, digits and '/'.

    MLflow refuses '@' in metric names, so a logger may write `best/R@1` as `best/R1` or
    `best/R_1`; all of them map to `best/r1`.
    """
    return re.sub(r"[^a-z0-9/]", "", name.lower())


@dataclass
class RunRecord:
    """One trial's run: identity, grid coordinates, config params, final metrics, problem."""

    run_id: str
    run_name: str
    status: str
    start_time: int
    parent_run_id: str | None
    row: str | None
    seed: int | None
    trial_id: str | None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # keyed by metric_key
    problem: str | None = None

    @property
    def complete(self) -> bool:
        """True when the run may be averaged into a table."""
        return self.problem is None

    def metric(self, name: str) -> float | None:
        """The run's final value of metric `name` (any spelling of '@'), or None."""
        return self.metrics.get(metric_key(name))


def to_record(run: Run) -> RunRecord:
    """Turn an MLflow `Run` into a RunRecord and decide whether it is complete."""
    tags = run.data.tags
    params = dict(run.data.params)
    record = RunRecord(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id[:8],
        status=run.info.status,
        start_time=run.info.start_time or 0,
        parent_run_id=tags.get(PARENT_RUN_TAG),
        row=tags.get(ROW_TAG),
        seed=_parse_seed(tags.get(SEED_TAG, params.get(SEED_PARAM))),
        trial_id=tags.get(TRIAL_TAG),
        params=params,
        metrics={metric_key(key): value for key, value in run.data.metrics.items()},
    )
    record.problem = _problem(record, tags.get(ERROR_TAG), tags.get(STOP_REASON_TAG))
    return record


def _parse_seed(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _problem(record: RunRecord, error: str | None, stop_reason: str | None) -> str | None:
    """Why the run must not be averaged in, or None. A grid trial (it has a row) stopped
    before its last epoch was cut short, not early-stopped by a scheduler: grids have none."""
    if record.status != "FINISHED":
        return f"status {record.status}" + (f": {error}" if error else "")
    missing = [name for name in REQUIRED_METRICS if record.metric(name) is None]
    if missing:
        return "missing metrics " + ", ".join(missing)
    if record.row is not None and stop_reason:
        return f"grid trial stopped before its last epoch: {stop_reason}"
    return None


def collect_runs(client: MlflowClient, experiment: str, parent_run_id: str | None = None) -> list[RunRecord]:
    """All trial runs of `experiment` (only children of `parent_run_id` when given).

    Sweep parent runs and `msc eval` runs are skipped. When two complete runs share a (row, seed), the newest is
    kept and the older one gets the problem "superseded". Raises RunLookupError when the
    experiment or the parent run does not exist.
    """
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise RunLookupError(f"MLflow experiment {experiment!r} not found at {client.tracking_uri}")
    if parent_run_id is not None:
        _check_parent(client, parent_run_id, experiment)
    filter_string = f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'" if parent_run_id else ""
    runs = _search_all(client, found.experiment_id, filter_string)
    skipped = (SWEEP_PARENT_ROLE, EVAL_ROLE)
    records = [to_record(run) for run in runs if run.data.tags.get(ROLE_TAG) not in skipped]
    records.sort(key=lambda record: (record.start_time, record.run_id))
    _mark_superseded(records)
    return records


def _check_parent(client: MlflowClient, parent_run_id: str, experiment: str) -> None:
    try:
        client.get_run(parent_run_id)
    except MlflowException as err:
        raise RunLookupError(f"parent run {parent_run_id!r} not found in experiment {experiment!r}: {err}") from err


def _search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=_PAGE_SIZE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _mark_superseded(records: list[RunRecord]) -> None:
    """Keep the newest complete run per (row, seed); records are sorted oldest first."""
    newest: dict[tuple[str, int], RunRecord] = {}
    for record in records:
        if not record.complete or record.row is None or record.seed is None:
            continue
        key = (record.row, record.seed)
        if key in newest:
            newest[key].problem = f"superseded by run {record.run_id} (same row and seed)"
        newest[key] = record


def parent_run_ids(records: list[RunRecord]) -> list[str]:
    """The distinct parent run ids of `records`, in first-seen order."""
    return list(dict.fromkeys(record.parent_run_id for record in records if record.parent_run_id))


class RanksLoader:
    """Downloads `ranks.parquet` of a run once and caches it; None when the run has none."""

    def __init__(self, client: MlflowClient) -> None:
        self._client = client
        self._cache: dict[str, pd.DataFrame | None] = {}

    def __call__(self, run_id: str) -> pd.DataFrame | None:
        if run_id not in self._cache:
            self._cache[run_id] = self._download(run_id)
        return self._cache[run_id]

    def _download(self, run_id: str) -> pd.DataFrame | None:
        with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
            try:
                path = self._client.download_artifacts(run_id, RANKS_ARTIFACT, tmp)
            except (MlflowException, OSError):
                return None
            return pd.read_parquet(Path(path))


@contextmanager
def _no_progress_bar():
    """Silence MLflow's per-download progress bar (one per run otherwise) while inside."""
    previous = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = previous


def metric_history(client: MlflowClient, run_id: str, name: str) -> list[tuple[int, float]]:
    """(step, value) pairs of a per-epoch metric, by step; accepts any spelling of '@'.

    Returns [] when the run never logged the metric.
    """
    wanted = metric_key(name)
    run = client.get_run(run_id)
    keys = [key for key in run.data.metrics if metric_key(key) == wanted]
    if not keys:
        return []
    history = client.get_metric_history(run_id, keys[0])
    return sorted((metric.step, metric.value) for metric in history)
