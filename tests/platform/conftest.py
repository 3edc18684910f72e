"""Shared fixtures of the platform tests: a tiny synthetic collection, an MLflow store, a tiny config.

Fixture names are stable; other platform tests rely on them:
- `tiny_data_root` (session): a root holding the `synthetic` collection, preset `tiny`.
- `mlflow_uri` (function): a SQLite tracking URI in tmp_path, also set as $MLFLOW_TRACKING_URI.
- `tiny_config` (function): synthetic.yaml shrunk to a 2-epoch, hidden-32, 2-head CPU run on
  `tiny_data_root`, one CPU thread, no progress bar.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from data_tools.synth import PRESETS, synthesize
from msc_platform.run.config import DATA_ROOT_ENV, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC_CONFIG = REPO_ROOT / "experiments" / "configs" / "synthetic.yaml"
TINY = PRESETS["tiny"]


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """A data root with the `synthetic` collection generated from preset `tiny` (seed 0)."""
    root = tmp_path_factory.mktemp("data")
    synthesize(root, collection="synthetic", preset="tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema created once (migrations take seconds)."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(_empty_mlflow_db, tmp_path, monkeypatch) -> str:
    """A fresh, empty SQLite MLflow store in tmp_path; $MLFLOW_TRACKING_URI points at it."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(_empty_mlflow_db, path)
    uri = f"sqlite:///{path}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def tiny_config(tiny_data_root, monkeypatch):
    """A tiny, deterministic CPU training config on `tiny_data_root` (2 epochs, hidden 32)."""
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    overrides = [
        f"data.root={tiny_data_root}", "data.synthetic_preset=null", "data.num_workers=0",
        f"model.text_dim={TINY.text_dim}", f"model.video_dim={TINY.video_dim}",
        "model.hidden=32", "model.heads=2", "model.hard_negative_start=1",
        "train.batch_size=8", "train.epochs=2", "train.lr=2e-3", "train.patience=5",
        "train.device=cpu", "train.num_threads=1", "train.progress=false",
        "train.eval_query_chunk=7", "train.eval_video_batch=5",
        "tracking.experiment=tiny", "tracking.log_checkpoint=true",
    ]
    return load_config(SYNTHETIC_CONFIG, overrides)
