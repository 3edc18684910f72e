"""Both checkpoint formats through the platform: `msc eval`, `msc export`, `train.init_from`.

Released-format files are built here as the released code writes them (torch.save of
{config, epoch, model_val, state_dict, optimizer}, its optimizer state pickling a schedule
object) from the project's weights through model.interop.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from model.interop import authors_config, load_authors_checkpoint, to_authors_state_dict
from model.network import MSC
from msc_platform.reports.records import collect_runs
from msc_platform.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from msc_platform.run.config import apply_overrides, from_dict, to_dict, to_yaml
from msc_platform.run.train import train
from tests.platform.conftest import TINY
from tests.platform.train_cli import msc, one_thread  # noqa: F401 (autouse fixture)

RECALLS = ("R@1", "R@5", "R@10", "R@100", "SumR")
RECALL_KEYS = [f"{branch}{name}" for branch in ("", "clip/", "frame/") for name in RECALLS]


def random_model(cfg, seed: int) -> MSC:
    torch.manual_seed(seed)
    return MSC(cfg.model).eval()


def save_project(model: MSC, cfg, path: Path, epoch: int = 3) -> Path:
    return save_checkpoint({"model": model.state_dict(), "config": to_dict(cfg), "epoch": epoch},
                           path)


def save_released(model: MSC, cfg, path: Path, schedule=None, epoch: int = 7) -> Path:
    """A best.ckpt in the released layout holding `model`'s weights."""
    optimizer = {"state": {}, "param_groups": [{"lr": 3e-4, "schedule": schedule, "params": [0]}]}
    torch.save({"config": authors_config(cfg.model, collection=cfg.data.collection),
                "epoch": epoch, "model_val": [1.0, 2.0, 3.0, 4.0, 10.0],
                "state_dict": to_authors_state_dict(model), "optimizer": optimizer}, path)
    return path


def config_file(cfg, path: Path) -> Path:
    path.write_text(to_yaml(cfg))
    return path


def run_eval(capsys, *argv: str) -> dict:
    assert msc(["eval", *argv]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "| fused |" in captured.err and "| SumR |" in captured.err  # the table on stderr
    return json.loads(captured.out)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_eval_gives_the_same_metrics_for_the_same_weights_in_both_formats(
        tiny_config, mlflow_uri, tmp_path, capsys, released_schedule):
    model = random_model(tiny_config, seed=5)
    ours = save_project(model, tiny_config, tmp_path / "best.pt")
    theirs = save_released(model, tiny_config, tmp_path / "best.ckpt", released_schedule)
    settings = config_file(tiny_config, tmp_path / "tiny.yaml")

    from_ours = run_eval(capsys, "--checkpoint", str(ours))
    from_theirs = run_eval(capsys, "--checkpoint", str(theirs), "--config", str(settings),
                           "--ranks", str(tmp_path / "ranks.parquet"))
    assert (from_ours["format"], from_theirs["format"]) == ("msc", "authors")
    assert (from_ours["epoch"], from_theirs["epoch"]) == (3, 7)
    for key in RECALL_KEYS:
        assert from_theirs["metrics"][key] == from_ours["metrics"][key], key
    assert from_theirs["metrics"]["spearman"] == pytest.approx(from_ours["metrics"]["spearman"])

    client = MlflowClient(mlflow_uri)
    for printed, path, experiment in ((from_ours, ours, "msc-eval"), (from_theirs, theirs, "tiny")):
        run = client.get_run(printed["run_id"])
        assert run.info.status == "FINISHED"
        assert client.get_experiment(run.info.experiment_id).name == experiment
        tags = run.data.tags
        assert tags["checkpoint_format"] == printed["format"]
        assert tags["checkpoint_sha256"] == sha256(path) == printed["sha256"]
        assert tags["msc.role"] == "eval" and tags["dataset"] == "synthetic"
        assert run.data.metrics["val/SumR"] == printed["metrics"]["SumR"]
        assert run.data.metrics["val/frame/R1"] == printed["metrics"]["frame/R@1"]
        assert run.data.params["model.hidden"] == "32"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"ranks.parquet", "config.yaml"} <= artifacts
    logged = pd.read_parquet(client.download_artifacts(from_theirs["run_id"], "ranks.parquet",
                                                       str(tmp_path)))
    assert logged.equals(pd.read_parquet(tmp_path / "ranks.parquet"))

    untracked = run_eval(capsys, "--checkpoint", str(ours), "--config", str(settings),
                         "tracking.enabled=false")
    assert untracked["run_id"] is None and untracked["metrics"] == from_ours["metrics"]
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 2
    assert collect_runs(client, "tiny") == []  # tables leave evaluation runs out


def test_eval_of_a_released_checkpoint_whose_widths_differ_from_the_data(tiny_config, tmp_path,
                                                                         capsys):
    wide = apply_overrides(tiny_config, {"model.video_dim": 768, "model.text_dim": 768})
    path = save_released(random_model(wide, seed=1), wide, tmp_path / "best.ckpt")
    settings = config_file(tiny_config, tmp_path / "tiny.yaml")
    assert msc(["eval", "--checkpoint", str(path), "--config", str(settings)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: the checkpoint's model does not fit the data" in err
    assert "visual_feat_dim" in err and "model.video_dim: config says 768" in err


@pytest.mark.parametrize("content, message", [
    (None, "checkpoint file not found"),
    ({"weights": torch.zeros(2), "config": {"lr": 1}}, "not a model checkpoint"),
    ([1, 2, 3], "expected a checkpoint dict, got list"),
])
def test_eval_and_export_name_a_file_that_is_not_a_checkpoint(tmp_path, capsys, content, message):
    path = tmp_path / "thing.ckpt"
    if content is not None:
        torch.save(content, path)
    for argv in (["eval", "--checkpoint", str(path)],
                 ["export", "--checkpoint", str(path), "--out", str(tmp_path / "out.ckpt")]):
        assert msc(argv) == 2
        err = capsys.readouterr().err
        assert f"{path}: " in err and message in err
    assert not (tmp_path / "out.ckpt").exists()


def test_a_released_checkpoint_with_a_bad_weight_names_the_file_and_key(tiny_config, tmp_path,
                                                                        capsys):
    path = save_released(random_model(tiny_config, seed=2), tiny_config, tmp_path / "best.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["state_dict"]["vproj_clip.bias"]
    torch.save(checkpoint, path)
    assert msc(["eval", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "vproj_clip.bias" in err


def test_export_refuses_a_released_checkpoint(tiny_config, tmp_path, capsys):
    path = save_released(random_model(tiny_config, seed=2), tiny_config, tmp_path / "best.ckpt")
    assert msc(["export", "--checkpoint", str(path), "--out", str(tmp_path / "again.ckpt")]) == 2
    assert "export needs this project's checkpoint" in capsys.readouterr().err


@pytest.fixture
def trained_run(tiny_config, tmp_path):
    """A real one-epoch run folder (last.pt, best.pt with history), no MLflow."""
    cfg = apply_overrides(tiny_config, {"train.epochs": 1, "tracking.enabled": False})
    train(cfg, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.slow
def test_export_round_trips_to_identical_weights_and_metrics(trained_run, mlflow_uri, tmp_path,
                                                             capsys):
    best = trained_run / "best.pt"
    out = tmp_path / "export" / "best.ckpt"
    assert msc(["export", "--checkpoint", str(best), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(out) and printed["sha256"] == sha256(out)

    exported = torch.load(out, weights_only=True)
    assert set(exported) == {"config", "epoch", "model_val", "state_dict", "optimizer"}
    stored = load_checkpoint(best)
    history = stored["history"][-1]
    assert exported["epoch"] == stored["epoch"] == 0
    assert exported["model_val"] == [history[f"val/{k}"] for k in ("R1", "R5", "R10", "R100",
                                                                    "SumR")]
    assert exported["config"]["hidden_size"] == 32 and exported["config"]["max_es_cnt"] == 5
    assert [p.name for p in out.parent.iterdir()] == ["best.ckpt"]  # no temporary left

    model, model_config = load_authors_checkpoint(out)
    ours = stored["model"]
    assert set(model.state_dict()) == set(ours)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ours[name]), name
    run_config = from_dict(stored["config"], str(best))
    for name in ("hidden", "heads", "sim_thr", "text_dim", "video_dim", "dropout"):
        assert getattr(model_config, name) == getattr(run_config.model, name), name

    from_pt = run_eval(capsys, "--checkpoint", str(best))
    settings = config_file(run_config, tmp_path / "run.yaml")
    from_ckpt = run_eval(capsys, "--checkpoint", str(out), "--config", str(settings))
    assert from_ckpt["metrics"] == from_pt["metrics"]
    assert from_pt["metrics"]["SumR"] == pytest.approx(history["val/SumR"])


def _weights_after_one_tiny_step_run(cfg, out: Path) -> dict[str, torch.Tensor]:
    """Train one epoch at lr 1e-12 (the weights stay where they started) and return them."""
    run_cfg = apply_overrides(cfg, {"train.epochs": 1, "train.lr": 1e-12})
    train(run_cfg, out)
    return load_checkpoint(out / "last.pt")["model"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["msc", "authors"])
def test_init_from_starts_training_from_either_format(tiny_config, mlflow_uri, tmp_path, fmt):
    source = random_model(tiny_config, seed=21)
    if fmt == "msc":
        path = save_project(source, tiny_config, tmp_path / "source.pt")
    else:
        path = save_released(source, tiny_config, tmp_path / "source.ckpt")
    cfg = apply_overrides(tiny_config, {"train.init_from": str(path)})
    weights = _weights_after_one_tiny_step_run(cfg, tmp_path / "run")
    fresh = _weights_after_one_tiny_step_run(tiny_config, tmp_path / "fresh")
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert not torch.allclose(fresh["weight_token"], source.state_dict()["weight_token"])

    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    run = next(r for r in runs if "init_from" in r.data.tags)
    assert run.data.tags["init_from"] == str(path) and run.data.tags["init_from_format"] == fmt
    assert run.data.tags["init_from_sha256"] == sha256(path)
    assert run.data.params["train.init_from"] == str(path)


@pytest.mark.parametrize("fmt", ["msc", "authors"])
def test_init_from_a_network_of_another_shape_fails_before_training(tiny_config, mlflow_uri,
                                                                    tmp_path, fmt):
    other = apply_overrides(tiny_config, {"model.hidden": 48})
    if fmt == "msc":
        path = save_project(random_model(other, seed=3), other, tmp_path / "other.pt")
    else:
        path = save_released(random_model(other, seed=3), other, tmp_path / "other.ckpt")
    cfg = apply_overrides(tiny_config, {"train.init_from": str(path)})
    with pytest.raises(CheckpointError, match=r"weight '[\w.]+' has shape \(.*48.*\), "
                                              r"the model needs \(.*32.*\)") as err:
        train(cfg, tmp_path / "run")
    assert str(err.value).startswith(f"{path}: ")
    assert not (tmp_path / "run" / "last.pt").exists()
    run = mlflow.search_runs(experiment_names=["tiny"], output_format="list")[0]
    assert run.info.status == "FAILED" and str(path) in run.data.tags["error"]


def test_msc_train_reports_a_missing_init_from_file(tiny_data_root, tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    code = msc(["train", "--data-root", str(tiny_data_root), "--out", str(tmp_path / "run"),
                f"train.init_from={missing}", "tracking.enabled=false", "train.device=cpu",
                "train.progress=false", "data.synthetic_preset=null",
                f"model.text_dim={TINY.text_dim}", f"model.video_dim={TINY.video_dim}"])
    assert code == 2
    assert f"{missing}: checkpoint file not found" in capsys.readouterr().err
