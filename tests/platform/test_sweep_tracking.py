"""Closing a sweep's child runs after Ray is gone (real SQLite MLflow store)."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from msc_platform.sweep_tracking import settle_trial_runs
from msc_platform.tracking import RunTracker

HISTORY = {"val/SumR": [100.0, 180.0, 150.0], "val/R1": [5.0, 20.0, 12.0],
           "diag/spearman": [10.0, 30.0, 25.0]}


def _run_with_history(uri: str, status: str, error: str | None = None):
    tracker = RunTracker.open(uri, "settle")
    for key, values in HISTORY.items():
        for epoch, value in enumerate(values):
            tracker.log_metrics({key: value}, step=epoch)
    if status != "RUNNING":
        tracker.finish(status, error=error)
    return tracker.client.get_run(tracker.run_id)


def test_a_finished_trial_whose_run_the_stop_left_killed_ends_finished_with_best_scores(mlflow_uri):
    killed = _run_with_history(mlflow_uri, "KILLED", error="stopped by SystemExit: 0")
    running = _run_with_history(mlflow_uri, "RUNNING")
    interrupted = _run_with_history(mlflow_uri, "RUNNING")
    settle_trial_runs(MlflowClient(mlflow_uri),
                      {"a": killed, "b": running, "c": interrupted},
                      {"a": {"status": "TERMINATED"}, "b": {"status": "TERMINATED"},
                       "c": {"status": "PENDING"}})
    client = MlflowClient(mlflow_uri)
    for run in (killed, running):
        after = client.get_run(run.info.run_id)
        assert after.info.status == "FINISHED"
        assert after.data.metrics["best/SumR"] == 180.0
        assert after.data.metrics["best/R1"] == 20.0
        assert after.data.metrics["best/spearman"] == 30.0
        assert after.data.metrics["best_epoch"] == 1.0
        assert "error" not in after.data.tags
    assert client.get_run(interrupted.info.run_id).info.status == "KILLED"


def test_a_failed_trial_keeps_its_failed_run(mlflow_uri):
    failed = _run_with_history(mlflow_uri, "FAILED", error="NonFiniteLossError: nan")
    settle_trial_runs(MlflowClient(mlflow_uri), {"a": failed}, {"a": {"status": "ERROR"}})
    after = MlflowClient(mlflow_uri).get_run(failed.info.run_id)
    assert after.info.status == "FAILED"
    assert after.data.tags["error"] == "NonFiniteLossError: nan"
