"""Training runs end to end on the tiny synthetic set: MLflow record, resume, failures, stops."""
from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from data_tools.synth import synthesize
from model.network import MSC
from msc_platform.run.config import ConfigError, apply_overrides
from msc_platform.run.data import prepare_data
from msc_platform.run.evaluate import evaluate
from msc_platform.run.runtime import seed_everything
from msc_platform.run.train import NonFiniteLossError, StopTraining, train

LOSS_TERMS = ("total", "base", "nce_clip", "nce_frame", "triplet_clip", "triplet_frame",
              "rkd_distance", "rkd_angle", "tcp", "cbva")
EPOCH_METRICS = ([f"loss/{t}" for t in LOSS_TERMS]
                 + ["segments", "lr", "epoch_time_s", "throughput_videos_s",
                    "diag/diffnorm_text", "diag/diffnorm_video", "diag/spearman"]
                 + [f"val/{p}{k}" for p in ("", "clip/", "frame/")
                    for k in ("R1", "R5", "R10", "R100", "SumR")])
BEST_METRICS = ["best/R1", "best/R5", "best/R10", "best/R100", "best/SumR", "best/clip/SumR",
                "best/frame/SumR", "best/diffnorm_text", "best/diffnorm_video", "best/spearman",
                "best_epoch"]


@pytest.fixture(scope="module")
def learnable_root(tmp_path_factory):
    """Tiny-preset features, twice the videos and less noise: two short epochs visibly learn.

    On the plain tiny set (12 val videos) two epochs of 3 steps stay within chance noise.
    """
    root = tmp_path_factory.mktemp("learnable")
    synthesize(root, "synthetic", "tiny", seed=0, train_videos=48, val_videos=24,
               caption_noise=0.1, frame_noise=0.1, detail=0.3, duplicate_prob=0.0)
    return root


def _untrained_sumr(cfg) -> float:
    seed_everything(cfg.train.seed)
    return evaluate(MSC(cfg.model), prepare_data(cfg), cfg)["metrics"]["SumR"]


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_two_epochs_improve_sumr_and_leave_the_mlflow_run(tiny_config, learnable_root, mlflow_uri,
                                                          tmp_path):
    cfg = apply_overrides(tiny_config, {"data.root": str(learnable_root), "train.lr": 5e-3})
    reports = []
    result = train(cfg, tmp_path / "run", on_epoch=reports.append, tags={"msc.sweep": "unit"})
    assert result.best_epoch in (0, 1) and [r.epoch for r in reports] == [0, 1]
    assert result.best_sumr > _untrained_sumr(cfg) + 5
    assert result.best_sumr == max(r.metrics["SumR"] for r in reports)
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"last.pt", "best.pt", "ranks.parquet"}

    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    assert run.data.params["model.hidden"] == "32" and run.data.params["train.lr"] == "0.005"
    assert run.data.tags["dataset"] == "synthetic" and run.data.tags["device"] == "cpu"
    assert run.data.tags["msc.sweep"] == "unit" and len(run.data.tags["dataset_fingerprint"]) == 64
    assert {"git_commit", "git_dirty", "versions.torch", "versions.mlflow"} <= set(run.data.tags)
    client = MlflowClient(mlflow_uri)
    for key in EPOCH_METRICS:
        steps = [step for step, _ in _history(client, result.run_id, key)]
        assert steps == [0, 1], key
    assert set(BEST_METRICS) <= set(run.data.metrics)
    assert run.data.metrics["best/SumR"] == pytest.approx(result.best_sumr)
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "metrics.json", "ranks.parquet", "checkpoints"} <= artifacts
    ranks = pd.read_parquet(client.download_artifacts(result.run_id, "ranks.parquet", str(tmp_path)))
    assert list(ranks.columns) == ["cap_id", "video_id", "rank_fused", "rank_clip", "rank_frame"]
    assert ranks["rank_fused"].min() >= 1 and len(ranks) == ranks["cap_id"].nunique()


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run_exactly(tiny_config, mlflow_uri, tmp_path):
    cfg = apply_overrides(tiny_config, {"train.epochs": 3, "train.deterministic": True})
    straight = []
    train(cfg, tmp_path / "straight", on_epoch=straight.append)

    def stop_after_two(report):
        if report.epoch == 1:
            raise StopTraining("interrupted for the test")

    first = train(cfg, tmp_path / "resumed", on_epoch=stop_after_two)
    resumed = []
    second = train(cfg, tmp_path / "resumed", resume=True, on_epoch=resumed.append)
    assert [r.epoch for r in resumed] == [2] and second.run_id == first.run_id

    client = MlflowClient(mlflow_uri)
    timing = ("epoch_time_s", "train_time_s", "throughput_videos_s", "SumR")
    for key in [k for k in straight[0].metrics if k not in timing]:
        assert _history(client, second.run_id, key) == [(r.epoch, r.metrics[key]) for r in straight], key
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert second.best_sumr == max(r.metrics["SumR"] for r in straight)


@pytest.mark.slow
def test_a_diverging_run_ends_failed_with_the_reason(tiny_config, mlflow_uri, tmp_path):
    # a real divergence, no injected fault: lr 1e30 blows the weights up after one update
    cfg = apply_overrides(tiny_config, {"train.lr": 1e30, "train.epochs": 1})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 0 in steps \d+-\d+"):
        train(cfg, tmp_path / "run")
    run = mlflow.search_runs(experiment_names=["tiny"], output_format="list")[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("NonFiniteLossError: non-finite loss at epoch 0")


@pytest.mark.slow
@pytest.mark.parametrize("patience", [0, 2])
def test_early_stopping_ends_at_the_epoch_that_exceeds_patience(tiny_config, tmp_path, patience):
    # released code: stop when consecutive epochs without a new best exceed patience, so a run
    # whose SumR never improves after epoch 0 trains patience + 2 epochs. lr 1e-12 leaves the
    # float32 weights as they are, so val SumR stays at its epoch-0 value (no new best).
    cfg = apply_overrides(tiny_config, {"train.lr": 1e-12, "train.epochs": 8,
                                        "train.patience": patience, "tracking.enabled": False})
    reports = []
    result = train(cfg, tmp_path / "run", on_epoch=reports.append)
    assert {r.metrics["SumR"] for r in reports} == {reports[0].metrics["SumR"]}
    assert [r.epoch for r in reports] == list(range(patience + 2))
    assert result.best_epoch == 0 and [r.is_best for r in reports].count(True) == 1


def test_bad_input_ends_failed_before_training(tiny_config, mlflow_uri, tmp_path):
    cfg = apply_overrides(tiny_config, {"model.video_dim": 48})
    with pytest.raises(ConfigError, match="model.video_dim: config says 48, but the features in .*synthetic are 32-d"):
        train(cfg, tmp_path / "run")
    run = mlflow.search_runs(experiment_names=["tiny"], output_format="list")[0]
    assert run.info.status == "FAILED" and "model.video_dim" in run.data.tags["error"]
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_a_stopped_run_is_killed_and_a_child_run_names_its_parent(tiny_config, mlflow_uri, tmp_path):
    client = MlflowClient(mlflow_uri)
    parent = client.create_run(client.create_experiment("parents")).info.run_id

    def tune_stops_the_trial(report):
        raise SystemExit(0)  # what ray.tune.report does when Tune stops a trial

    with pytest.raises(SystemExit):
        train(tiny_config, tmp_path / "run", on_epoch=tune_stops_the_trial, parent_run_id=parent)
    run = mlflow.search_runs(experiment_names=["tiny"], output_format="list")[0]
    assert run.info.status == "KILLED" and "SystemExit" in run.data.tags["error"]
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert (tmp_path / "run" / "last.pt").is_file()


def test_resume_refuses_a_different_model(tiny_config, tmp_path):
    from msc_platform.run.checkpoint import save_checkpoint
    from msc_platform.run.config import to_dict

    other = apply_overrides(tiny_config, {"model.hidden": 64})
    save_checkpoint({"model": {}, "optimizer": {}, "scheduler": {}, "epoch": 0,
                     "best_sumr": 1.0, "best_epoch": 0, "bad_epochs": 0, "config": to_dict(other),
                     "rng": {}, "run_id": None, "history": []}, tmp_path / "last.pt")
    with pytest.raises(ConfigError, match="last.pt: cannot resume: the model config differs"):
        train(apply_overrides(tiny_config, {"tracking.enabled": False}), tmp_path, resume=True)


def test_msc_train_prints_the_resolved_config_and_rejects_bad_input(tiny_data_root, capsys):
    import argparse

    import yaml

    from msc_platform.cli.train import register

    parser = argparse.ArgumentParser(prog="msc")
    register(parser.add_subparsers(dest="command", required=True))

    def msc(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return args.func(args)

    assert msc("train", "--print-config", "--data-root", str(tiny_data_root), "model.cbva=off") == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["cbva"] == "off" and printed["data"]["root"] == str(tiny_data_root)
    assert msc("train", "train.epochs=zero") == 2
    assert "train.epochs: expected int, got 'zero'" in capsys.readouterr().err
    assert msc("train", "--resume") == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_a_run_the_caller_owns_is_logged_into_but_never_closed(tiny_config, mlflow_uri, tmp_path):
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("tiny")).info.run_id
    result = train(tiny_config, tmp_path / "ok", run_id=run_id, close_run=False)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and result.run_id == run_id
    assert len(client.get_metric_history(run_id, "val/SumR")) == tiny_config.train.epochs
    assert "best/SumR" not in run.data.metrics  # the closing record is the owner's to log
    assert not {a.path for a in client.list_artifacts(run_id)} & {"metrics.json", "ranks.parquet"}

    client.set_terminated(run_id, "FINISHED")
    bad = apply_overrides(tiny_config, {"model.video_dim": 48})
    with pytest.raises(ConfigError, match="model.video_dim"):
        train(bad, tmp_path / "bad", run_id=run_id, close_run=False)
    after = client.get_run(run_id)
    assert after.info.status == "FINISHED" and "error" not in after.data.tags
    with pytest.raises(ConfigError, match="needs the run_id"):
        train(tiny_config, tmp_path / "none", close_run=False)
