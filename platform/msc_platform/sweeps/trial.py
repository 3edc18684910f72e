"""The body of one Ray Tune trial: `msc_platform.run.train.train` with Tune reporting and resuming.

Each epoch the trial reports its scores with a `ray.tune.Checkpoint` of the trainer's folder
(last.pt, best.pt, ranks.parquet). A retried or restored trial gets that checkpoint back from
`ray.tune.get_checkpoint()`, copies it into a fresh folder and calls `train(resume=True)`; the
checkpoint carries the MLflow run id, so the trial continues its own child run. A trial that
failed before its first checkpoint finds its run by the tags `msc.trial_id` and
`mlflow.parentRunId`, so it never gets a second run either.

Non-finite results: the trainer raises NonFiniteLossError on a NaN/inf loss; this module raises
NonFiniteMetricError on a NaN/inf score before it reaches the searcher. Both end the MLflow run
FAILED. Such a trial is not worth retrying (the same checkpoint gives the same NaN), so a retry
that finds its run FAILED for a non-finite reason fails again at once, before any training:
FailureConfig(max_failures) then bounds the retries at a few seconds each.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import ray
from mlflow.tracking import MlflowClient
from ray import tune

from msc_platform.names import (
    ABLATION_TAG,
    LOSS_TOTAL,
    NODE_ID_TAG,
    NODE_IP_TAG,
    ROW_TAG,
    SEED_TAG,
    STOP_REASON_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)
from msc_platform.run.train import EpochReport, NonFiniteLossError, StopTraining, train
from msc_platform.sweeps.spec import ROW_KEY, SEED_KEY, SweepSpec, trial_config

NON_FINITE_ERRORS = ("NonFiniteLossError", "NonFiniteMetricError")
REPORTED = {"SumR": "SumR", "R1": "val/R1", "R5": "val/R5", "R10": "val/R10",
            "R100": "val/R100", "loss": LOSS_TOTAL}
RUN_ID_KEY = "mlflow_run_id"


class NonFiniteMetricError(RuntimeError):
    """A trial's evaluation score is NaN or infinite."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep needs besides its params; shipped once with tune.with_parameters."""

    spec: SweepSpec
    parent_run_id: str
    tracking_uri: str  # absolute: a server URL or sqlite:////abs/path


def trial_tags(spec: SweepSpec, params: dict[str, Any], trial_id: str) -> dict[str, str]:
    """MLflow tags of a trial's child run: msc.sweep, msc.trial_id, the Ray node running it
    (msc.node_id, msc.node_ip; a retry on another node updates them), and msc.ablation /
    msc.row / msc.seed in grid mode."""
    tags = {SWEEP_TAG: spec.name, TRIAL_TAG: trial_id,
            NODE_ID_TAG: ray.get_runtime_context().get_node_id(),
            NODE_IP_TAG: ray.util.get_node_ip_address()}
    if spec.is_grid:
        tags.update({ABLATION_TAG: spec.name, ROW_TAG: str(params[ROW_KEY]),
                     SEED_TAG: str(params[SEED_KEY])})
    return tags


def find_trial_run(client: MlflowClient, experiment: str, parent_run_id: str, trial_id: str):
    """The MLflow run of trial `trial_id` under `parent_run_id`, or None when it has none yet."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id], max_results=1,
        filter_string=(f"tags.`msc.trial_id` = '{trial_id}' and "
                       f"tags.`mlflow.parentRunId` = '{parent_run_id}'"))
    return runs[0] if runs else None


def failed_non_finite(run) -> bool:
    """True when `run` ended FAILED because its loss or score was not finite."""
    error = run.data.tags.get("error", "")
    return run.info.status == "FAILED" and error.startswith(NON_FINITE_ERRORS)


def tune_metrics(report: EpochReport) -> dict[str, Any]:
    """The per-epoch result sent to Tune; raises NonFiniteMetricError for a NaN/inf score."""
    metrics = {name: float(report.metrics[key]) for name, key in REPORTED.items()
               if key in report.metrics}
    if not math.isfinite(metrics["SumR"]):
        raise NonFiniteMetricError(f"val SumR is {metrics['SumR']} at epoch {report.epoch}")
    metrics.update({"epoch": report.epoch + 1, RUN_ID_KEY: report.run_id or "",
                    "node_id": ray.get_runtime_context().get_node_id()})
    return metrics


def epoch_reporter(total_epochs: int) -> Callable[[EpochReport], None]:
    """The `on_epoch` hook: report each epoch's scores and checkpoint folder to Tune.

    When Tune stops the trial (its scheduler stopped it), `tune.report` exits the training
    thread; before the last epoch that becomes StopTraining, so the trainer still ends the run
    FINISHED with its best scores and artifacts (tag stop_reason says why it ended early).
    """
    def report_epoch(report: EpochReport) -> None:
        metrics = tune_metrics(report)
        checkpoint = tune.Checkpoint.from_directory(str(report.checkpoint_dir))
        try:
            tune.report(metrics, checkpoint=checkpoint)
        except SystemExit as stop:
            if report.epoch + 1 < total_epochs:
                raise StopTraining(f"stopped early by the sweep's scheduler after epoch "
                                   f"{report.epoch}") from stop

    return report_epoch


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _restore_checkpoint(out_dir: Path) -> bool:
    """Copy Tune's latest checkpoint of this trial into `out_dir`; False when it has none."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        shutil.copytree(folder, out_dir, dirs_exist_ok=True)
    return True


def run_trial(params: dict[str, Any], context: TrialContext) -> None:
    """Train one trial of `context.spec` with Tune's `params` (raises what train() raises)."""
    spec, trial = context.spec, tune.get_context()
    trial_id = trial.get_trial_id()
    cfg = trial_config(spec, params)
    cfg = replace(cfg, tracking=replace(cfg.tracking, uri=context.tracking_uri,
                                        experiment=spec.mlflow_experiment,
                                        run_name=trial.get_trial_name()))
    client = MlflowClient(tracking_uri=context.tracking_uri)
    existing = find_trial_run(client, spec.mlflow_experiment, context.parent_run_id, trial_id)
    if existing is not None and failed_non_finite(existing):
        raise NonFiniteLossError(f"trial {trial_id} is not retried: {existing.data.tags['error']}")
    if existing is not None and STOP_REASON_TAG in existing.data.tags:
        client.delete_tag(existing.info.run_id, STOP_REASON_TAG)  # an interrupted trial goes on
    out_dir = _fresh_dir(Path(trial.get_trial_dir()) / "train")
    resume = _restore_checkpoint(out_dir)
    train(cfg, out_dir, resume=resume, on_epoch=epoch_reporter(cfg.train.epochs),
          run_id=existing.info.run_id if existing is not None else None,
          parent_run_id=context.parent_run_id, tags=trial_tags(spec, params, trial_id))


