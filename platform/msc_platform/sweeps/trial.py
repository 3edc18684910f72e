"""The body of one Ray Tune trial: `msc_platform.run.train.train` with Tune reporting and resuming.

The trial logs into the MLflow run the sweep driver opened for it before its work started
(msc_platform.sweeps.trial_runs, found by the tags `msc.trial_id` and `mlflow.parentRunId`) and
never decides that run's status: it trains with `close_run=False`, and the driver closes the run
from Tune's view of the trial.

Each epoch the trial reports its scores with a `ray.tune.Checkpoint` of the trainer's folder
(last.pt, best.pt, ranks.parquet). A retried or restored trial gets that checkpoint back from
`ray.tune.get_checkpoint()`, copies it into a fresh folder and calls `train(resume=True)`, so it
continues its own run from the last checkpointed epoch.

Non-finite results: the trainer raises NonFiniteLossError on a NaN/inf loss; this module raises
NonFiniteMetricError on a NaN/inf score before it reaches the searcher. Either is recorded on the
run as tag `msc.non_finite`. Such a trial is not worth retrying (the same checkpoint gives the
same NaN), so a retry that finds the tag fails again at once, before any training:
FailureConfig(max_failures) then bounds the retries at a few seconds each, and the driver ends
the run FAILED.
"""
from __future__ import annotations

import math
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import ray
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray import tune

from msc_platform.names import LOSS_TOTAL, NODE_ID_TAG, NODE_IP_TAG, NON_FINITE_TAG, VAL_PREFIX
from msc_platform.run.train import EpochReport, NonFiniteLossError, train
from msc_platform.sweeps.spec import SWEEP_METRICS, SweepSpec, trial_config
from msc_platform.sweeps.trial_runs import FINAL_EPOCH_KEY, find_trial_run

# Tune result name -> EpochReport metric: the sweep metrics (val scores) and the total loss.
REPORTED = {**{name: name if name == "SumR" else VAL_PREFIX + name for name in SWEEP_METRICS},
            "loss": LOSS_TOTAL}
RUN_ID_KEY = "mlflow_run_id"


class NonFiniteMetricError(RuntimeError):
    """A trial's evaluation score is NaN or infinite."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep needs besides its params; shipped once with tune.with_parameters."""

    spec: SweepSpec
    parent_run_id: str
    tracking_uri: str  # absolute: a server URL or sqlite:////abs/path


def node_tags() -> dict[str, str]:
    """The Ray node running this attempt of the trial (a retry on another node updates them)."""
    return {NODE_ID_TAG: ray.get_runtime_context().get_node_id(),
            NODE_IP_TAG: ray.util.get_node_ip_address()}


def tune_metrics(report: EpochReport) -> dict[str, Any]:
    """The per-epoch result sent to Tune; raises NonFiniteMetricError for a NaN/inf score."""
    metrics = {name: float(report.metrics[key]) for name, key in REPORTED.items()
               if key in report.metrics}
    if not math.isfinite(metrics["SumR"]):
        raise NonFiniteMetricError(f"val SumR is {metrics['SumR']} at epoch {report.epoch}")
    metrics.update({"epoch": report.epoch + 1, FINAL_EPOCH_KEY: report.final,
                    RUN_ID_KEY: report.run_id or "",
                    "node_id": ray.get_runtime_context().get_node_id()})
    return metrics


def epoch_reporter() -> Callable[[EpochReport], None]:
    """The `on_epoch` hook: report each epoch's scores and checkpoint folder to Tune.

    When Tune stops the trial (its scheduler stopped it, or the trial's worker is handed to the
    next trial), `tune.report` raises SystemExit in the training thread. It must end that thread:
    Tune waits for it (2 s) before it reuses the worker, and a function that returned normally
    instead would block on its final result. So it passes through train(), which makes no MLflow
    call for a run it does not own; the driver has closed the run.
    """
    def report_epoch(report: EpochReport) -> None:
        metrics = tune_metrics(report)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(report.checkpoint_dir)))

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


class TrialRunMissingError(RuntimeError):
    """The sweep driver opened no MLflow run for this trial (it opens one before the trial starts)."""


def run_trial(params: dict[str, Any], context: TrialContext) -> None:
    """Train one trial of `context.spec` with Tune's `params` into the run the driver opened.

    Raises TrialRunMissingError when that run is missing, NonFiniteLossError at once for a trial
    whose loss or score already was non-finite, and what train() raises.
    """
    spec, trial = context.spec, tune.get_context()
    trial_id = trial.get_trial_id()
    cfg = trial_config(spec, params)
    cfg = replace(cfg, tracking=replace(cfg.tracking, uri=context.tracking_uri,
                                        experiment=spec.mlflow_experiment))
    client = MlflowClient(tracking_uri=context.tracking_uri)
    run = find_trial_run(client, spec.mlflow_experiment, context.parent_run_id, trial_id)
    if run is None:
        raise TrialRunMissingError(f"trial {trial_id}: no MLflow run under parent run "
                                   f"{context.parent_run_id} in {context.tracking_uri}")
    if NON_FINITE_TAG in run.data.tags:
        raise NonFiniteLossError(f"trial {trial_id} is not retried: {run.data.tags[NON_FINITE_TAG]}")
    out_dir = _fresh_dir(Path(trial.get_trial_dir()) / "train")
    resume = _restore_checkpoint(out_dir)
    try:
        train(cfg, out_dir, resume=resume, on_epoch=epoch_reporter(),
              run_id=run.info.run_id, tags=node_tags(), close_run=False)
    except (NonFiniteLossError, NonFiniteMetricError) as err:
        mark_non_finite(client, run.info.run_id, err)
        raise


def mark_non_finite(client: MlflowClient, run_id: str, err: Exception) -> None:
    """Tag the run `msc.non_finite` so that a retry fails at once. Best effort: when the store
    refuses the write (a busy server), the trial still fails with `err`, not with the store's
    error, and a retry trains again (bounded by max_failures)."""
    try:
        client.set_tag(run_id, NON_FINITE_TAG, f"{type(err).__name__}: {err}"[:5000])
    except MlflowException as store_error:
        print(f"note: could not tag run {run_id} {NON_FINITE_TAG}: {store_error}", file=sys.stderr)
