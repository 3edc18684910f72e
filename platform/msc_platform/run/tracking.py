"""MLflow tracking for one training run, through an explicit `MlflowClient` (no global state).

The tracking URI is `tracking.uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` in the
working directory. For a SQLite store, new experiments keep their artifacts in `mlartifacts/`
next to the database file (not in the working directory).
"""
from __future__ import annotations

import json
import os
import platform as std_platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from msc_platform.names import ERROR_TAG, PARENT_RUN_TAG

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PACKAGES = ("torch", "numpy", "mlflow", "ray", "h5py", "msc-platform")
PARAM_BATCH = 100  # MLflow accepts at most 100 params per log_batch call
METRIC_BATCH = 1000  # ... and at most 1000 metrics
TAG_LIMIT = 5000  # characters kept of a tag value (MLflow caps tag values)
REPO_ROOT = Path(__file__).resolve().parents[3]


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
    """The id of experiment `name`, created when missing (safe when trials race to create it)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = _sqlite_artifact_root(uri)
    location = f"{root}/{name}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


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

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        pass
