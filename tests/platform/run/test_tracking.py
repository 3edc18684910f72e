"""MLflow tracking helpers against a real SQLite store."""
from __future__ import annotations

from pathlib import Path
from threading import Barrier, Thread

import mlflow
import pytest
from mlflow.entities import Dataset, DatasetInput
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from msc_platform.run.tracking import (
    DEFAULT_TRACKING_URI,
    NullTracker,
    RunTracker,
    git_state,
    package_versions,
    tracking_uri,
)


def test_tracking_uri_precedence(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"
    assert tracking_uri("sqlite:///other.db") == "sqlite:///other.db"


def test_a_run_records_params_metrics_tags_and_artifacts(mlflow_uri, tmp_path):
    tracker = RunTracker.open(mlflow_uri, "exp", run_name="r", tags={"dataset": "synthetic"})
    tracker.log_params({f"p{i}": i for i in range(150)} | {"none": None})
    tracker.log_metrics({"loss/total": 2.0, "val/R1": 10.0}, step=0)
    tracker.log_metrics({"loss/total": 1.0, "val/R1": 20.0}, step=1)
    tracker.log_json({"best": {"SumR": 1.0}}, "metrics.json")
    (tmp_path / "ranks.parquet").write_bytes(b"x")
    tracker.log_artifact(tmp_path / "ranks.parquet")
    tracker.finish("FINISHED")

    run = mlflow.search_runs(experiment_names=["exp"], output_format="list")[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert len(run.data.params) == 151 and run.data.params["none"] == "None"
    assert run.data.tags["dataset"] == "synthetic"
    assert tracker.logged_steps("loss/total") == {0, 1}
    artifacts = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(tracker.run_id)}
    assert artifacts == {"metrics.json", "ranks.parquet"}
    db_folder = Path(mlflow_uri[len("sqlite:///"):]).parent
    assert run.info.artifact_uri.startswith((db_folder / "mlartifacts").as_uri())


def test_reopening_continues_the_same_run(mlflow_uri):
    first = RunTracker.open(mlflow_uri, "exp")
    first.log_params({"a": 1})
    first.finish("KILLED", error="stopped")
    again = RunTracker.open(mlflow_uri, "exp", run_id=first.run_id, tags={"resumed": "yes"})
    assert again.run_id == first.run_id and again.has_params()
    assert MlflowClient(mlflow_uri).get_run(first.run_id).info.status == "RUNNING"
    again.finish("FINISHED")
    runs = mlflow.search_runs(experiment_names=["exp"], output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["resumed"] == "yes"


def test_failed_runs_keep_the_error_and_children_name_their_parent(mlflow_uri):
    parent = RunTracker.open(mlflow_uri, "exp")
    child = RunTracker.open(mlflow_uri, "exp", parent_run_id=parent.run_id)
    child.finish("FAILED", error="ValueError: " + "x" * 10_000)
    run = MlflowClient(mlflow_uri).get_run(child.run_id)
    assert run.info.status == "FAILED" and run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.tags["error"].startswith("ValueError: x") and len(run.data.tags["error"]) == 5000


def test_an_unknown_run_id_is_an_error(mlflow_uri):
    with pytest.raises(MlflowException):
        RunTracker.open(mlflow_uri, "exp", run_id="0" * 32)


def test_environment_tags():
    state = git_state()
    assert len(state["git_commit"]) == 40 and state["git_dirty"] in ("true", "false")
    versions = package_versions()
    assert versions["versions.torch"].startswith("2.") and "versions.python" in versions


def test_null_tracker_records_nothing(tmp_path):
    tracker = NullTracker()
    tracker.log_params({"a": 1})
    tracker.log_metrics({"m": 1.0}, step=0)
    tracker.log_json({}, "x.json")
    tracker.finish("FAILED", error="e")
    assert tracker.run_id is None and tracker.logged_steps("m") == set() and not tracker.has_params()


def test_parallel_runs_logging_the_same_new_dataset_all_record_it(mlflow_uri):
    # parallel trials of one experiment log the same collection at the same moment; MLflow's SQL
    # store checks for the dataset and then inserts it, so all but one may hit its UNIQUE key
    runs = [RunTracker.open(mlflow_uri, "exp") for _ in range(6)]
    dataset = DatasetInput(Dataset(name="tvr/train", digest="d1", source_type="local",
                                   source='{"uri": "/data"}'))
    start, errors = Barrier(len(runs)), []

    def log(tracker: RunTracker) -> None:
        start.wait()
        try:
            tracker.log_datasets([dataset])
        except MlflowException as error:  # collected: an exception in a thread would be lost
            errors.append(error)

    threads = [Thread(target=log, args=(tracker,)) for tracker in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    client = MlflowClient(mlflow_uri)
    for tracker in runs:
        inputs = client.get_run(tracker.run_id).inputs.dataset_inputs
        assert [item.dataset.name for item in inputs] == ["tvr/train"]
