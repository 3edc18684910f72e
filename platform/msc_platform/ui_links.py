"""Addresses of MLflow UI pages: the runs of an experiment, one run. Imports nothing.

MLflow 3.x UIs open an experiment on its GenAI pages unless the address asks for the model
training view (`workflowType=machine_learning`), so every link here does.
"""
from __future__ import annotations

LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` (make mlflow-ui) serves a local store
UI_WORKFLOW_QUERY = "workflowType=machine_learning"  # opens the UI's model-training pages


def ui_address(uri: str, local_ui: str = LOCAL_UI) -> str:
    """The address of the MLflow UI for tracking URI `uri`: the server itself for http(s)://,
    else `local_ui` (where `mlflow ui` serves a SQLite or file store)."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else local_ui


def experiment_runs_url(ui_base: str, experiment_id: str) -> str:
    """The UI page listing the runs of experiment `experiment_id` (the model-training view:
    without `workflowType=machine_learning`, MLflow 3.x UIs open the GenAI pages)."""
    return f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_WORKFLOW_QUERY}"


def run_url(ui_base: str, experiment_id: str, run_id: str) -> str:
    """The UI page of run `run_id` in experiment `experiment_id` (model-training view)."""
    return (f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
            f"?{UI_WORKFLOW_QUERY}")
