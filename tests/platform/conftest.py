"""Shared fixtures of the platform tests: a tiny synthetic collection, an MLflow store, a tiny config.

Fixture names are stable; other platform tests rely on them:
- `tiny_data_root` (session): a root holding the `synthetic` collection, preset `tiny`.
- `mlflow_uri` (function): a SQLite tracking URI in tmp_path, also set as $MLFLOW_TRACKING_URI.
- `tiny_config` (function): synthetic.yaml shrunk to a 2-epoch, hidden-32, 2-head CPU run on
  `tiny_data_root`, one CPU thread, no progress bar, no model registration (about 1 s a run;
  tests/platform/run/test_registry.py switches it on).
- `mlflow_server` (module): a real `mlflow server` on 127.0.0.1 (SQLite store, served
  artifacts); yields its URL. Starting it takes 10-30 s: use it in slow tests.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from data_tools.synth import PRESETS, synthesize
from msc_platform.cluster.local import free_port
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
        "tracking.register_model=false",
    ]
    return load_config(SYNTHETIC_CONFIG, overrides)


def _wait_for_health(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Return once `url`/health answers 200; fail the test with the server log when the server
    exits or does not answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite store and served artifacts; yields its URL."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port("127.0.0.1")
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "artifacts")]
    with open(folder / "server.log", "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(url, server, folder / "server.log")
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
