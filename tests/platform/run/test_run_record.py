"""What a run records besides its metrics: dataset inputs, system metrics, the experiment's kind,
against a real SQLite MLflow store."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from msc_platform.names import SYSTEM_PREFIX
from msc_platform.run.config import ConfigError, apply_overrides
from msc_platform.run.data import prepare_data
from msc_platform.run.tracking import get_or_create_experiment
from msc_platform.run.train import StopTraining, train
from tests.platform.train_cli import one_thread  # noqa: F401 (autouse fixture)

KIND = "mlflow.experimentKind"
MONITOR_THREAD = "SystemMetricsMonitor"  # the name MLflow gives the monitor's thread
CPU = SYSTEM_PREFIX + "cpu_utilization_percentage"


def quick(cfg, **values):
    """`cfg` with one epoch and no system metrics, plus `values` (dotted keys)."""
    base = {"train.epochs": 1, "tracking.system_metrics": False}
    return apply_overrides(cfg, {**base, **values})


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == MONITOR_THREAD and t.is_alive()]


def test_new_and_untagged_experiments_get_the_training_kind(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    fresh = get_or_create_experiment(client, "fresh", mlflow_uri)
    untagged = client.create_experiment("untagged")
    chosen = client.create_experiment("chosen", tags={KIND: "genai_development"})
    for experiment_id in (untagged, chosen):
        assert get_or_create_experiment(client, client.get_experiment(experiment_id).name,
                                        mlflow_uri) == experiment_id
    kinds = {e: client.get_experiment(e).tags.get(KIND) for e in (fresh, untagged, chosen)}
    assert kinds == {fresh: "custom_model_development", untagged: "custom_model_development",
                     chosen: "genai_development"}  # a kind someone chose is kept


def test_a_run_records_train_and_val_as_dataset_inputs_once_when_resumed(tiny_config,
                                                                          mlflow_uri, tmp_path):
    cfg = quick(tiny_config, **{"train.epochs": 2})

    def stop_after_first(report):
        raise StopTraining("interrupted for the test")

    first = train(cfg, tmp_path / "run", on_epoch=stop_after_first)
    again = train(cfg, tmp_path / "run", resume=True)
    assert again.run_id == first.run_id

    client = MlflowClient(mlflow_uri)
    run = client.get_run(first.run_id)
    inputs = run.inputs.dataset_inputs
    report = prepare_data(cfg).report
    folder = (Path(cfg.data.root) / "synthetic").resolve()
    found = {}
    for item in inputs:
        tags = {t.key: t.value for t in item.tags}
        found[item.dataset.name] = (item.dataset.digest, item.dataset.source_type,
                                    json.loads(item.dataset.source)["uri"],
                                    tags["mlflow.data.context"],
                                    json.loads(item.dataset.profile)["videos"])
    assert len(inputs) == 2  # not duplicated by the resume
    digest = run.data.tags["dataset_fingerprint"][:36]
    assert found == {
        "synthetic/train": (digest, "local", str(folder), "train", report.videos["train"]),
        "synthetic/val": (digest, "local", str(folder), "val", report.videos["val"])}
    experiment = run.info.experiment_id
    assert [r.info.run_id for r in client.search_runs(
        [experiment], "dataset.name = 'synthetic/val' and dataset.context = 'val'")] == [run.info.run_id]


def test_system_metrics_are_sampled_while_training_and_the_thread_ends(tiny_config, mlflow_uri,
                                                                        tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)
    cfg = quick(tiny_config, **{"tracking.system_metrics": True,
                                "tracking.system_metrics_interval_s": 0.1})
    result = train(cfg, tmp_path / "ok")
    assert monitor_threads() == []
    client = MlflowClient(mlflow_uri)
    samples = client.get_metric_history(result.run_id, CPU)
    assert samples and [m.step for m in samples] == list(range(len(samples)))
    metrics = client.get_run(result.run_id).data.metrics
    assert SYSTEM_PREFIX + "system_memory_usage_megabytes" in metrics

    def fail(report):
        raise RuntimeError("failed for the test")

    with pytest.raises(RuntimeError, match="failed for the test"):
        train(cfg, tmp_path / "failed", on_epoch=fail)
    assert monitor_threads() == []
    failed = client.search_runs([client.get_run(result.run_id).info.experiment_id],
                                "attributes.status = 'FAILED'")
    assert len(failed) == 1 and client.get_metric_history(failed[0].info.run_id, CPU)


def test_system_metrics_switched_off(tiny_config, mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)
    seen = []
    cfg = quick(tiny_config, **{"tracking.system_metrics_interval_s": 0.1})
    result = train(cfg, tmp_path / "run", on_epoch=lambda report: seen.extend(monitor_threads()))
    metrics = MlflowClient(mlflow_uri).get_run(result.run_id).data.metrics
    assert seen == [] and "val/SumR" in metrics
    assert not [key for key in metrics if key.startswith(SYSTEM_PREFIX)]


def test_the_new_tracking_keys_are_validated(tiny_config):
    with pytest.raises(ConfigError) as caught:
        apply_overrides(tiny_config, ["tracking.system_metrics_interval_s=0",
                                      "tracking.register_model=maybe",
                                      "tracking.system_metrics=1"])
    keys = [key for key, _ in caught.value.problems]
    assert keys == ["tracking.register_model", "tracking.system_metrics",
                    "tracking.system_metrics_interval_s"], caught.value
    assert tiny_config.tracking.system_metrics is True
    assert tiny_config.tracking.system_metrics_interval_s == 10.0
