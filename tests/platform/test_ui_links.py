"""UI links: the model-training pages of an experiment and a run; what `make mlflow-ui` prints."""
from __future__ import annotations

import subprocess
import sys

from mlflow.tracking import MlflowClient

from msc_platform.reports.ui_pages import store_pages
from msc_platform.ui_links import LOCAL_UI, experiment_runs_url, run_url, ui_address


def test_ui_links_open_the_model_training_pages():
    assert ui_address("http://10.0.0.5:5000/") == "http://10.0.0.5:5000"
    assert ui_address("sqlite:////tmp/mlflow.db") == LOCAL_UI == "http://127.0.0.1:5000"
    assert (experiment_runs_url("http://10.0.0.5:5000/", "7")
            == "http://10.0.0.5:5000/#/experiments/7/runs?workflowType=machine_learning")
    assert (run_url("http://127.0.0.1:5000", "7", "ab12")
            == "http://127.0.0.1:5000/#/experiments/7/runs/ab12?workflowType=machine_learning")


def test_mlflow_ui_lists_each_experiment_and_its_latest_sweep(mlflow_uri, tmp_path):
    client = MlflowClient(mlflow_uri)
    first = client.create_experiment("msc-synthetic")
    client.create_experiment("empty")
    client.create_run(first, tags={"msc.role": "sweep-parent"}, run_name="old")
    newest = client.create_run(first, tags={"msc.role": "sweep-parent"}, run_name="default")
    client.create_run(first, tags={"mlflow.parentRunId": newest.info.run_id})
    lines = store_pages(mlflow_uri, "http://127.0.0.1:5001")
    assert lines == [
        f"msc-synthetic: {experiment_runs_url('http://127.0.0.1:5001', first)}",
        f"  latest sweep 'default': {run_url('http://127.0.0.1:5001', first, newest.info.run_id)}"]
    printed = subprocess.run([sys.executable, "-m", "msc_platform.reports.ui_pages", "--port",
                              "5001", "--tracking-uri", mlflow_uri], capture_output=True,
                             text=True, check=True).stdout
    assert printed.splitlines()[-2:] == lines
