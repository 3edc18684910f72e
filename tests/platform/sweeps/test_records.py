"""Closing a sweep's child runs after Ray is gone (real SQLite MLflow store)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient
from ray import tune

from msc_platform.run.checkpoint import save_checkpoint
from msc_platform.run.tracking import RunTracker
from msc_platform.run.train import BEST, LAST, RANKS
from msc_platform.sweeps.records import settle_trial_runs

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


def _trainer_folder(folder, best_metrics: dict, history: list[dict]):
    """A trainer folder as a trial reports it to Tune: last.pt, best.pt and ranks.parquet."""
    folder.mkdir()
    state = {"model": {}, "optimizer": {}, "scheduler": {}, "epoch": len(history) - 1,
             "best_sumr": best_metrics["best/SumR"], "best_epoch": 1, "bad_epochs": 0,
             "best_metrics": best_metrics, "history": history, "rng": {}, "run_id": None,
             "config": {"tracking": {"log_checkpoint": True}}}
    save_checkpoint(state, folder / LAST)
    save_checkpoint(state, folder / BEST)
    pd.DataFrame({"query": ["q0", "q1"], "rank": [1, 7]}).to_parquet(folder / RANKS)
    return tune.Checkpoint.from_directory(str(folder))


def test_a_finished_trial_whose_run_failed_in_teardown_gets_its_record_from_the_checkpoint(
        mlflow_uri, tmp_path):
    # The scheduler stopped the trial; its worker exited while the trainer was logging
    # metrics.json, so the trainer's own except clause closed the run FAILED.
    failed = _run_with_history(mlflow_uri, "FAILED",
                               error="FileNotFoundError: [Errno 2] No such file: '/tmp/x/metrics.json'")
    best = {"best/SumR": 175.0, "best/R1": 19.0, "best_epoch": 1.0}
    history = [{"val/SumR": 100.0}, {"val/SumR": 175.0}, {"val/SumR": 150.0}]
    checkpoint = _trainer_folder(tmp_path / "trainer", best, history)
    settle_trial_runs(MlflowClient(mlflow_uri), {"a": failed},
                      {"a": {"status": "TERMINATED", "checkpoint": checkpoint}})
    client = MlflowClient(mlflow_uri)
    after = client.get_run(failed.info.run_id)
    assert after.info.status == "FINISHED"
    assert "error" not in after.data.tags
    assert after.data.metrics["best/SumR"] == 175.0  # the checkpoint's, not the history's 180
    assert after.data.metrics["best/R1"] == 19.0
    artifacts = {a.path for a in client.list_artifacts(failed.info.run_id)}
    assert {"metrics.json", RANKS, "checkpoints"} <= artifacts
    download = tmp_path / "download"
    download.mkdir()
    record = client.download_artifacts(failed.info.run_id, "metrics.json", str(download))
    assert json.loads(Path(record).read_text()) == {"best": best, "epochs_run": 3, "history": history}
    ranks = pd.read_parquet(client.download_artifacts(failed.info.run_id, RANKS, str(download)))
    assert ranks["rank"].tolist() == [1, 7]
