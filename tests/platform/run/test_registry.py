"""The model registry: a run's best.pt registered as msc-<collection>@best, and `msc eval` of a
models:/ URI, against a real SQLite store and (slow) a real `mlflow server`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from model.network import MSC
from msc_platform.run.checkpoint import save_checkpoint
from msc_platform.run.config import apply_overrides, to_dict
from msc_platform.run.registry import register_best_model
from msc_platform.run.tracking import RunTracker
from msc_platform.run.train import train
from tests.platform.train_cli import msc, one_thread  # noqa: F401 (autouse fixture)

NAME = "msc-synthetic"
BEST = f"models:/{NAME}@best"


def run_eval(capsys, *argv: str) -> dict:
    """`msc eval` in this process; its JSON output (stdout holds nothing else). Fails the test
    on a non-zero exit."""
    capsys.readouterr()  # what came before
    assert msc(["eval", *argv]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def random_checkpoint(cfg, path: Path, seed: int, epoch: int = 4) -> Path:
    """A project checkpoint (weights, config, epoch) of a randomly initialised model."""
    torch.manual_seed(seed)
    return save_checkpoint({"model": MSC(cfg.model).state_dict(), "config": to_dict(cfg),
                            "epoch": epoch}, path)


def test_msc_train_registers_its_best_checkpoint_and_msc_eval_loads_it(tiny_config, mlflow_uri,
                                                                        tmp_path, capsys):
    cfg = apply_overrides(tiny_config, {"train.epochs": 1, "tracking.system_metrics": False,
                                        "tracking.register_model": True})
    result = train(cfg, tmp_path / "run")
    client = MlflowClient(mlflow_uri)
    version = client.get_model_version_by_alias(NAME, "best")
    run = client.get_run(result.run_id)
    assert (str(version.version), version.run_id, version.status) == ("1", result.run_id, "READY")
    assert run.data.tags["msc.registered_model"] == f"{NAME}/1"
    (output,) = run.outputs.model_outputs  # the run's LoggedModel holds the version's files
    logged = client.get_logged_model(output.model_id)
    assert logged.experiment_id == run.info.experiment_id and logged.source_run_id == run.info.run_id
    assert version.source == logged.artifact_location and logged.status == "READY"

    from_registry = run_eval(capsys, "--checkpoint", BEST)
    from_file = run_eval(capsys, "--checkpoint", str(result.checkpoint_path))
    assert (from_registry["format"], from_file["format"]) == ("mlflow", "msc")
    assert from_registry["epoch"] == from_file["epoch"] == result.best_epoch
    assert from_registry["metrics"] == from_file["metrics"]
    evaluation = client.get_run(from_registry["run_id"])
    assert evaluation.data.tags["checkpoint"] == BEST
    assert evaluation.data.tags["checkpoint_model"] == f"{NAME}/1"
    assert [(i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"])
            for i in evaluation.inputs.dataset_inputs] == [("synthetic/val", "val")]

    folder = Path(client.get_model_version_download_uri(NAME, "1").removeprefix("file://"))
    # one copy of the weights (the pickled module), no optimiser state, no per-epoch files
    assert [p.relative_to(folder).as_posix() for p in folder.rglob("*.pt*")] == ["data/model.pth"]
    assert (folder / "data" / "model.pth").stat().st_size < result.checkpoint_path.stat().st_size
    assert (folder / "extra_files" / "config.yaml").is_file()


def test_the_latest_registration_holds_the_best_alias(tiny_config, mlflow_uri, tmp_path, capsys):
    runs = []
    for seed in (1, 2):
        tracker = RunTracker.open(mlflow_uri, "tiny", run_name=f"seed {seed}")
        checkpoint = random_checkpoint(tiny_config, tmp_path / f"best{seed}.pt", seed, epoch=seed)
        record = register_best_model(tracker.client, tracker.run_id, checkpoint)
        tracker.finish()
        runs.append(tracker.run_id)
        assert (record.name, record.version, record.uri) == (NAME, str(seed), f"models:/{NAME}/{seed}")
    client = MlflowClient(mlflow_uri)
    assert client.get_model_version_by_alias(NAME, "best").run_id == runs[1]
    assert client.get_model_version(NAME, "1").aliases == []
    first = run_eval(capsys, "--checkpoint", f"models:/{NAME}/1", "tracking.enabled=false")
    latest = run_eval(capsys, "--checkpoint", BEST, "tracking.enabled=false")
    by_id = run_eval(capsys, "--checkpoint", f"models:/{record.model_id}", "tracking.enabled=false")
    assert (first["epoch"], latest["epoch"], by_id["epoch"]) == (1, 2, 2)
    assert first["metrics"] != latest["metrics"] == by_id["metrics"]


@pytest.mark.parametrize("uri, problem", [
    ("models:/msc-nothing@best", "Registered Model with name=msc-nothing not found"),
    (f"models:/{NAME}@nope", "alias nope not found"),
    (f"models:/{NAME}/7", "not found"),
    (f"models:/{NAME}", "expected models:/<name>@<alias>, models:/<name>/<version>"),
])
def test_a_bad_model_uri_names_the_uri_and_the_problem(tiny_config, mlflow_uri, tmp_path, capsys,
                                                       uri, problem):
    tracker = RunTracker.open(mlflow_uri, "tiny")
    register_best_model(tracker.client, tracker.run_id,
                        random_checkpoint(tiny_config, tmp_path / "best.pt", seed=0))
    assert msc(["eval", "--checkpoint", uri]) == 2
    error = capsys.readouterr().err
    assert f"{uri}: " in error and problem in error, error
    assert "Traceback" not in error


def test_register_model_false_registers_nothing(tiny_config, mlflow_uri, tmp_path):
    assert tiny_config.tracking.register_model is False  # the fixture switches it off
    cfg = apply_overrides(tiny_config, {"train.epochs": 1, "tracking.system_metrics": False})
    result = train(cfg, tmp_path / "run")
    client = MlflowClient(mlflow_uri)
    assert client.search_registered_models() == []
    assert "msc.registered_model" not in client.get_run(result.run_id).data.tags


@pytest.mark.slow
def test_registry_and_msc_eval_through_a_tracking_server(tiny_config, mlflow_server, tmp_path,
                                                         capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    checkpoints = [random_checkpoint(tiny_config, tmp_path / f"best{s}.pt", s) for s in (1, 2)]
    for checkpoint in checkpoints:
        tracker = RunTracker.open(mlflow_server, "tiny")
        record = register_best_model(tracker.client, tracker.run_id, checkpoint)
        tracker.finish()
    client = MlflowClient(mlflow_server)
    assert str(client.get_registered_model(NAME).aliases["best"]) == record.version == "2"

    served = run_eval(capsys, "--checkpoint", BEST, f"tracking.uri={mlflow_server}")
    local = run_eval(capsys, "--checkpoint", str(checkpoints[1]), "tracking.enabled=false")
    assert served["metrics"] == local["metrics"] and served["format"] == "mlflow"
    assert client.get_run(served["run_id"]).data.tags["checkpoint_model"] == f"{NAME}/2"
