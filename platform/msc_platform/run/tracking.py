"""MLflow tracking for one training run, through an explicit `MlflowClient` (no global state).

The tracking URI is `tracking.uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` in the
working directory. For a SQLite store, new experiments keep their artifacts in `mlartifacts/`
next to the database file (not in the working directory). Experiments the platform creates are
tagged `mlflow.experimentKind=custom_model_development` (MLflow's "Machine learning" kind).

Besides params, metrics, tags and artifacts, a run records its data as MLflow dataset inputs
(`collection_inputs`, `RunTracker.log_datasets`) and, while it trains, MLflow's system metrics
(`system_metrics`). The UI pages of an experiment and a run: msc_platform.ui_links.
"""
from __future__ import annotations

import json
import logging
import os
import platform as std_platform
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from msc_platform.names import (
    DATASET_CONTEXT_TAG,
    ERROR_TAG,
    EXPERIMENT_KIND_TAG,
    PARENT_RUN_TAG,
    TRAINING_EXPERIMENT_KIND,
)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DIGEST_LIMIT = 36  # MLflow refuses dataset digests longer than this
PACKAGES = ("torch", "numpy", "mlflow", "ray", "h5py", "msc-platform")
PARAM_BATCH = 100  # MLflow accepts at most 100 params per log_batch call
METRIC_BATCH = 1000  # ... and at most 1000 metrics
TAG_LIMIT = 5000  # characters kept of a tag value (MLflow caps tag values)
DATASET_RACE_RETRIES = 3  # retries of log_inputs after a parallel run inserted the same dataset
REPO_ROOT = Path(__file__).resolve().parents[3]
MONITOR_LOGGER = "mlflow.system_metrics.system_metrics_monitor"


def tracking_uri(configured: str | None = None) -> str:
    """The MLflow tracking URI: `configured`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _sqlite_artifact_root(uri: str) -> str | None:
    """`file://<db folder>/mlartifacts` for a sqlite:/// URI, else None (the server decides)."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri[len("sqlite:///"):]).expanduser().resolve()
    return (db_path.parent / "mlartifacts").as_uri()


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment `name`, created when missing (safe when trials race to create it).

    The experiment gets tag mlflow.experimentKind=custom_model_development when it is created,
    and when an existing one lacks that tag (a kind set by someone else is kept). Raises what
    MLflow raises when the store cannot be read or written.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        root = _sqlite_artifact_root(uri)
        location = f"{root}/{name}" if root else None
        try:
            return client.create_experiment(name, artifact_location=location,
                                            tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND})
        except MlflowException:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG,
                                  TRAINING_EXPERIMENT_KIND)
    return experiment.experiment_id


def collection_inputs(collection: str, folder: str | os.PathLike, report: Any,
                      splits: tuple[str, ...]) -> list[DatasetInput]:
    """One MLflow dataset input per split of a collection (`report`: its validation Report).

    name `<collection>/<split>` (distinct per split: MLflow keeps one input per name and digest),
    digest the first DIGEST_LIMIT characters of `report.fingerprint` (the feature cache's key
    source), source the collection's folder (source type `local`), tag mlflow.data.context = the
    split, and the split's video and caption counts and the feature widths as the profile.
    """
    source = json.dumps({"uri": str(Path(folder).resolve())})
    digest = report.fingerprint[:DIGEST_LIMIT] or "unknown"
    inputs = []
    for split in splits:
        profile = {"videos": report.videos.get(split), "captions": report.captions.get(split),
                   "video_dim": report.video_dim, "text_dim": report.text_dim}
        dataset = Dataset(name=f"{collection}/{split}", digest=digest, source_type="local",
                          source=source, profile=json.dumps(profile, sort_keys=True))
        inputs.append(DatasetInput(dataset, [InputTag(DATASET_CONTEXT_TAG, split)]))
    return inputs


def git_state(repo: Path = REPO_ROOT) -> dict[str, str]:
    """{"git_commit": sha or "unknown", "git_dirty": "true"/"false"/"unknown"} of the repository."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = "unknown" if status is None else str(bool(status)).lower()
    return {"git_commit": commit or "unknown", "git_dirty": dirty}


def package_versions() -> dict[str, str]:
    """{"versions.<package>": version} for the packages that shape a run, plus Python."""
    versions = {"versions.python": std_platform.python_version()}
    for name in PACKAGES:
        try:
            versions[f"versions.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[f"versions.{name}"] = "not installed"
    return versions


def _is_dataset_race(error: MlflowException) -> bool:
    """Whether `error` is the datasets table's unique key refusing a second insert, in the words
    of SQLite ("UNIQUE constraint failed: datasets...") or PostgreSQL / MySQL ("duplicate key",
    "Duplicate entry") stores."""
    message = str(error)
    return "datasets" in message and any(
        marker in message for marker in ("UNIQUE constraint failed", "duplicate key",
                                         "Duplicate entry"))


class RunTracker:
    """One MLflow run: params, per-step metrics, tags, artifacts and its final status."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    @classmethod
    def open(cls, uri: str, experiment: str, *, run_id: str | None = None,
             run_name: str | None = None, parent_run_id: str | None = None,
             tags: dict[str, str] | None = None) -> "RunTracker":
        """Continue run `run_id` (set back to RUNNING) or create a new run in `experiment`.

        A new run with `parent_run_id` is a child run (tag mlflow.parentRunId). Raises
        MlflowException when `run_id` does not exist in the store at `uri`.
        """
        client = MlflowClient(tracking_uri=uri)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags[PARENT_RUN_TAG] = parent_run_id
        if run_id is not None:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            tracker = cls(client, run_id)
            tracker.set_tags(all_tags)
            return tracker
        experiment_id = get_or_create_experiment(client, experiment, uri)
        run = client.create_run(experiment_id, run_name=run_name,
                                tags={k: str(v) for k, v in all_tags.items()})
        return cls(client, run.info.run_id)

    @classmethod
    def attach(cls, uri: str, run_id: str) -> "RunTracker":
        """Log into the existing run `run_id` as it is, without changing its status.

        Raises MlflowException when the run does not exist in the store at `uri`.
        """
        client = MlflowClient(tracking_uri=uri)
        client.get_run(run_id)
        return cls(client, run_id)

    def has_params(self) -> bool:
        """True when the run already holds params (a resumed run)."""
        return bool(self.client.get_run(self.run_id).data.params)

    def log_datasets(self, inputs: list[DatasetInput]) -> None:
        """Record dataset inputs (collection_inputs) on the run. An input the run already has
        (same name and digest: a resumed run) is not added again.

        Two runs of one experiment that log the same new dataset at the same moment (parallel
        trials) race in MLflow's SQL store: it checks for the dataset, then inserts it, so the
        slower run gets a unique-key error. The dataset then exists, so the call is
        retried (DATASET_RACE_RETRIES times). Raises MlflowException for any other error.
        """
        if not inputs:
            return
        for attempt in range(DATASET_RACE_RETRIES + 1):
            try:
                self.client.log_inputs(self.run_id, datasets=list(inputs))
                return
            except MlflowException as error:
                if not _is_dataset_race(error) or attempt == DATASET_RACE_RETRIES:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params (values as strings; None as 'None'), PARAM_BATCH at a time."""
        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + PARAM_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log {name: value} at `step` (NaN and inf are stored as they are)."""
        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        for start in range(0, len(items), METRIC_BATCH):
            self.client.log_batch(self.run_id, metrics=items[start:start + METRIC_BATCH])

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which metric `key` has been logged in this run."""
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set tags (values as strings, cut to TAG_LIMIT characters)."""
        items = [RunTag(key, str(value)[:TAG_LIMIT]) for key, value in tags.items()]
        if items:
            self.client.log_batch(self.run_id, tags=items)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload one local file under `artifact_path` in the run's artifacts."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store `text` as the artifact `artifact_file`."""
        self.client.log_text(self.run_id, text, artifact_file)

    def log_json(self, data: dict, artifact_file: str) -> None:
        """Store `data` as indented JSON in the artifact `artifact_file`."""
        self.log_text(json.dumps(data, indent=2, sort_keys=True), artifact_file)

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """End the run with `status` (FINISHED, FAILED or KILLED); `error` becomes tag `error`."""
        if error is not None:
            self.set_tags({ERROR_TAG: error})
        self.client.set_terminated(self.run_id, status=status)


class NullTracker(RunTracker):
    """Stands in for RunTracker when tracking is switched off: records nothing."""

    def __init__(self):
        super().__init__(client=None, run_id=None)

    def has_params(self) -> bool:
        return False

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def logged_steps(self, key: str) -> set[int]:
        return set()

    def log_datasets(self, inputs: list[DatasetInput]) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        pass


@contextmanager
def quiet(logger_name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Drop the records of logger `logger_name` below `level` while the block runs."""
    logger = logging.getLogger(logger_name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def _start_monitor(tracker: RunTracker, interval_s: float):
    """A started MLflow SystemMetricsMonitor logging into the tracker's run, or None when the
    tracker records nothing or psutil (which MLflow's monitor needs) is missing (noted on
    stderr). Its steps continue those of a resumed run."""
    if tracker.run_id is None:
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as err:
        print(f"note: no system metrics for run {tracker.run_id}: {err} "
              "(pip install psutil)", file=sys.stderr)
        return None
    with quiet(MONITOR_LOGGER):  # its INFO lines, per run and per sweep trial
        monitor = SystemMetricsMonitor(tracker.run_id, sampling_interval=interval_s,
                                       samples_before_logging=1, resume_logging=True,
                                       tracking_uri=tracker.client.tracking_uri)
        monitor.start()
    return monitor


@contextmanager
def system_metrics(tracker: RunTracker, interval_s: float, enabled: bool = True) -> Iterator[Any]:
    """MLflow's system metrics (`system/cpu_utilization_percentage`, memory, disk, network; GPU
    when pynvml imports) sampled every `interval_s` seconds into the tracker's run while the
    block runs; yields the monitor (None when off).

    The monitor's thread is stopped and its last samples flushed when the block ends, normally
    or by an exception; that never raises (MLflow logs what went wrong). A block shorter than
    one interval records no sample. $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, when set, beats
    `interval_s`.
    """
    monitor = _start_monitor(tracker, interval_s) if enabled else None
    try:
        yield monitor
    finally:
        if monitor is not None:
            with quiet(MONITOR_LOGGER):
                monitor.finish()
