"""The sweep driver's ownership of trial runs: the Tune callback and the final pass.

Real SQLite MLflow store and real `ray.tune` Trial objects (stubs: no actor behind them); the
sweeps that drive the callback through Tune itself are in test_runner.py and test_cluster.py.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.experiment import Trial

from msc_platform.run.checkpoint import save_checkpoint
from msc_platform.run.tracking import RunTracker
from msc_platform.run.train import BEST, LAST, RANKS
from msc_platform.sweeps.spec import load_sweep_spec
from msc_platform.sweeps.trial_runs import (
    TrialRuns,
    settle_trial_runs,
    short_error,
    stop_reason,
    trial_run_name,
)
from tests.platform.sweeps.test_runner import write_tiny_spec

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


def _spec(tmp_path, data_root, body: dict, epochs: int = 3):
    return load_sweep_spec(write_tiny_spec(tmp_path / "spec.yaml", data_root, "owner", epochs, body))


SEARCH = {"num_samples": 2, "space": {"model.sim_thr": {"uniform": [0.6, 0.95]},
                                      "model.tcp": {"choice": [True, False]},
                                      "model.cbva": {"choice": ["adaptive", "off"]}}}


def _trial(trial_id: str, config: dict, last_result: dict | None = None) -> Trial:
    number = int(trial_id.rsplit("_", 1)[1])
    trial = Trial("run_trial", config=config, trial_id=trial_id, stub=True,
                  experiment_tag=f"{number}_" + ",".join(f"{k}={v}" for k, v in config.items()))
    if last_result is not None:
        trial.update_last_result(last_result)
    return trial


def test_run_names_read_as_the_trial_values(tmp_path, tiny_data_root):
    search = _spec(tmp_path, tiny_data_root, SEARCH)
    params = {"model.sim_thr": 0.8123, "model.tcp": True, "model.cbva": "adaptive"}
    assert trial_run_name(search, 3, params) == "t03 sim_thr=0.812 tcp cbva=adaptive"
    params["model.tcp"] = False
    assert trial_run_name(search, 12, params) == "t12 sim_thr=0.812 no_tcp cbva=adaptive"
    grid = _spec(tmp_path, tiny_data_root, {"rows": {"full": {}, "no_tcp": {"model.tcp": False}},
                                            "seeds": [0, 1]})
    assert trial_run_name(grid, 1, {"row": "no_tcp", "train.seed": 1}) == "t01 no_tcp seed=1"


def test_the_driver_opens_one_run_per_trial_and_closes_a_stopped_one_finished(
        tmp_path, tiny_data_root, mlflow_uri):
    spec = _spec(tmp_path, tiny_data_root, SEARCH)
    parent = RunTracker.open(mlflow_uri, spec.mlflow_experiment).run_id
    owner = pickle.loads(pickle.dumps(TrialRuns(spec, parent, mlflow_uri)))  # as Tune stores it
    config = {"model.sim_thr": 0.7, "model.tcp": True, "model.cbva": "off"}
    trial = _trial("abc_00001", config)
    owner.on_trial_start(0, [trial], trial)
    client = MlflowClient(mlflow_uri)
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("owner").experiment_id])
              if r.info.run_id != parent]
    assert run.info.status == "RUNNING" and run.info.run_name == "t01 sim_thr=0.7 tcp cbva=off"
    assert run.data.tags["msc.trial_id"] == "abc_00001"
    assert run.data.tags["mlflow.parentRunId"] == parent
    for epoch, sumr in enumerate([100.0, 180.0]):  # what the worker logs
        client.log_metric(run.info.run_id, "val/SumR", sumr, step=epoch)

    client.set_terminated(run.info.run_id, "KILLED")  # an interrupted sweep, then a resume:
    client.set_tag(run.info.run_id, "error", "the sweep was interrupted")
    owner.on_trial_start(0, [trial], trial)
    again = client.get_run(run.info.run_id)
    assert again.info.status == "RUNNING" and "error" not in again.data.tags

    trial.update_last_result({"epoch": 2, "SumR": 180.0, "final_epoch": False, "done": True})  # ASHA
    owner.on_trial_complete(0, [trial], trial)
    closed = client.get_run(run.info.run_id)
    assert closed.info.status == "FINISHED"
    assert closed.data.metrics["best/SumR"] == 180.0
    assert closed.data.tags["stop_reason"] == "stopped early by the sweep's scheduler after epoch 1"
    children = client.search_runs([client.get_experiment_by_name("owner").experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 1


def test_a_trial_that_ran_all_its_epochs_has_no_stop_reason(tmp_path, tiny_data_root, mlflow_uri):
    spec = _spec(tmp_path, tiny_data_root, SEARCH, epochs=2)
    parent = RunTracker.open(mlflow_uri, spec.mlflow_experiment).run_id
    owner = TrialRuns(spec, parent, mlflow_uri)
    trial = _trial("abc_00000", {"model.sim_thr": 0.9, "model.tcp": False, "model.cbva": "off"})
    owner.on_trial_start(0, [trial], trial)
    trial.update_last_result({"epoch": 2, "SumR": 50.0, "final_epoch": True, "done": True})
    owner.on_trial_complete(0, [trial], trial)
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("owner").experiment_id],
                                filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert run.info.status == "FINISHED" and "stop_reason" not in run.data.tags


def test_the_final_pass_closes_a_finished_trial_a_dead_driver_left_running(mlflow_uri, tmp_path):
    best = {"best/SumR": 175.0, "best/R1": 19.0, "best_epoch": 1.0}
    history = [{"val/SumR": 100.0}, {"val/SumR": 175.0}, {"val/SumR": 150.0}]
    checkpoint = _trainer_folder(tmp_path / "trainer", best, history)
    left_open = _run_with_history(mlflow_uri, "RUNNING")
    done = _run_with_history(mlflow_uri, "FINISHED")
    client = MlflowClient(mlflow_uri)
    client.log_metric(done.info.run_id, "best/SumR", 999.0)
    done = client.get_run(done.info.run_id)
    settle_trial_runs(client, {"a": left_open, "b": done},
                      {"a": {"status": "TERMINATED", "checkpoint": checkpoint},
                       "b": {"status": "TERMINATED", "checkpoint": checkpoint}})
    assert client.get_run(left_open.info.run_id).data.metrics["best/SumR"] == 175.0
    assert client.get_run(left_open.info.run_id).info.status == "FINISHED"
    assert client.get_run(done.info.run_id).data.metrics["best/SumR"] == 999.0  # left alone


def test_a_trial_that_never_reported_has_no_stop_reason(tmp_path, tiny_data_root):
    spec = _spec(tmp_path, tiny_data_root, SEARCH)
    assert stop_reason(_trial("abc_00002", {"model.tcp": True}), spec) is None
    stopped = _trial("abc_00002", {"model.tcp": True}, {"epoch": 1, "final_epoch": False})
    assert stop_reason(stopped, spec) == "stopped early by the sweep's scheduler after epoch 0"


@pytest.mark.parametrize("line, short", [
    ("msc_platform.run.train.NonFiniteLossError: non-finite loss", "NonFiniteLossError: non-finite loss"),
    ("ray.exceptions.RayActorError: The actor died", "RayActorError: The actor died"),
    ("NonFiniteLossError: nan", "NonFiniteLossError: nan"),
    ("error at a.b: c", "error at a.b: c"),
])
def test_error_lines_drop_the_exception_module_path(line, short):
    assert short_error(line) == short


def test_the_run_of_a_trial_the_saved_state_lost_is_retired(mlflow_uri):
    orphan = _run_with_history(mlflow_uri, "RUNNING")
    kept = _run_with_history(mlflow_uri, "RUNNING")
    client = MlflowClient(mlflow_uri)
    settle_trial_runs(client, {"lost": orphan, "b": kept}, {"b": {"status": "PENDING"}})
    gone = client.get_run(orphan.info.run_id)
    assert gone.info.status == "KILLED" and gone.info.lifecycle_stage == "deleted"
    assert "not in the sweep's saved state" in gone.data.tags["msc.orphan"]
    assert client.get_run(kept.info.run_id).info.lifecycle_stage == "active"
    experiment = client.get_experiment_by_name("settle").experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment])] == [kept.info.run_id]
