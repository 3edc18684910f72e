"""MLflow records of a sweep: the parent run, and the status of each trial's child run at the end.

The parent run (tags msc.role=sweep-parent, msc.sweep; msc.ablation in grid mode) holds the spec,
the search space or grid, and at the end the best trial's config and scores. Child runs are
written by the trials themselves (msc_platform.sweeps.trial); `settle_trial_runs` makes sure none
is left RUNNING when the driver is done with it (a worker killed for good, a trial stopped by the
scheduler whose thread was torn down before it could close its run).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from msc_platform.names import (
    ABLATION_TAG,
    BEST_RUN_TAG,
    BEST_SUMR,
    BEST_TRIAL_TAG,
    ROLE_TAG,
    STOP_REASON_TAG,
    SWEEP_BASE_CONFIG_ARTIFACT,
    SWEEP_BEST_ARTIFACT,
    SWEEP_PARENT_ROLE,
    SWEEP_SPACE_ARTIFACT,
    SWEEP_TAG,
    VAL_SUMR,
)
from msc_platform.run.checkpoint import CheckpointError, load_checkpoint
from msc_platform.run.config import to_yaml
from msc_platform.run.tracking import RunTracker, tracking_uri
from msc_platform.run.train import LAST, log_run_record
from msc_platform.sweeps.spec import SweepSpec

PARENT_ROLE = SWEEP_PARENT_ROLE


def absolute_tracking_uri(configured: str | None = None) -> str:
    """The tracking URI with a relative `sqlite:///file` made absolute (trials run in other folders).

    Server URLs (http://, https://, databricks) are returned unchanged.
    """
    uri = tracking_uri(configured)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):]).expanduser().resolve()
        return f"sqlite:///{path}"
    if uri.startswith("file:") or "://" not in uri:
        path = Path(uri[len("file:"):] if uri.startswith("file:") else uri).expanduser().resolve()
        return path.as_uri()
    return uri


def _describe_space(spec: SweepSpec) -> dict[str, Any]:
    if spec.is_grid:
        return {"rows": spec.rows, "seeds": spec.seeds}
    return {key: {dist.kind: dist.args} for key, dist in spec.space.items()}


def _parent_params(spec: SweepSpec) -> dict[str, Any]:
    params = {"sweep.mode": "grid" if spec.is_grid else "search", "sweep.metric": spec.metric,
              "sweep.metric_mode": spec.mode, "sweep.trials": spec.total_trials,
              "sweep.max_concurrent_trials": spec.max_concurrent_trials,
              "sweep.seed": spec.seed, "sweep.cpus_per_trial": spec.cpus_per_trial,
              "sweep.gpus_per_trial": spec.gpus_per_trial, "sweep.max_failures": spec.max_failures,
              "sweep.scheduler": spec.scheduler.type, "sweep.base_config": spec.base_config.name}
    if spec.scheduler.type == "asha":
        params.update({"sweep.asha.grace_period": spec.scheduler.grace_period,
                       "sweep.asha.reduction_factor": spec.scheduler.reduction_factor})
    for key, value in _describe_space(spec).items():
        params[f"space.{key}"] = json.dumps(value)[:500]
    return params


def open_parent_run(spec: SweepSpec, uri: str, run_id: str | None = None) -> RunTracker:
    """Create the sweep's parent run (or reopen `run_id` when resuming) and describe the sweep."""
    tags = {ROLE_TAG: PARENT_ROLE, SWEEP_TAG: spec.name}
    if spec.is_grid:
        tags[ABLATION_TAG] = spec.name
    tracker = RunTracker.open(uri, spec.mlflow_experiment, run_id=run_id, run_name=spec.name,
                              tags=tags)
    if run_id is None:
        tracker.log_params(_parent_params(spec))
        tracker.log_text(spec.path.read_text(), f"sweep/{spec.path.name}")
        tracker.log_text(yaml.safe_dump(_describe_space(spec), sort_keys=False), SWEEP_SPACE_ARTIFACT)
        tracker.log_text(to_yaml(spec.base), SWEEP_BASE_CONFIG_ARTIFACT)
    return tracker


def finish_parent_run(tracker: RunTracker, best: dict[str, Any] | None, counts: dict[str, int],
                      status: str) -> None:
    """Log the best trial (config, scores, run id) and trial counts on the parent; end it with `status`."""
    tracker.log_metrics({f"trials/{name}": float(n) for name, n in counts.items()}, step=0)
    if best:
        scores = {f"best/{k}": float(v) for k, v in best["metrics"].items()
                  if isinstance(v, (int, float)) and math.isfinite(v)}
        tracker.log_metrics(scores, step=0)
        tracker.set_tags({BEST_TRIAL_TAG: best["trial_id"], BEST_RUN_TAG: best["run_id"]})
        tracker.log_json(best, SWEEP_BEST_ARTIFACT)
    tracker.finish(status)


def trial_runs(client: MlflowClient, experiment: str, parent_run_id: str) -> list:
    """Every child run of the sweep's parent run."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], max_results=10000,
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def _log_record_from_checkpoint(tracker: RunTracker, checkpoint) -> bool:
    """Log the run record (train.log_run_record) from a trial's last Tune checkpoint.

    checkpoint: a ray.tune.Checkpoint of the trainer's folder, or None. Returns False (logging
    nothing) when there is none or its last.pt cannot be read.
    """
    if checkpoint is None:
        return False
    try:
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(Path(folder) / LAST)
            log_run_record(tracker, dict(state.get("best_metrics") or {}), state["epoch"],
                           state["history"], Path(folder),
                           bool(state["config"]["tracking"]["log_checkpoint"]))
    except (CheckpointError, OSError, KeyError):
        return False
    return True


def settle_trial_runs(client: MlflowClient, runs_by_trial: dict[str, Any],
                      outcomes: dict[str, dict[str, Any]]) -> None:
    """Close every child run the trials left open or cut off, by what Tune says happened to it.

    Call it after Ray is shut down (no trial can still be closing its own run).
    outcomes: {trial_id: {"status": Tune status, "error": str | None,
    "checkpoint": the trial's last ray.tune.Checkpoint or None}}.
    TERMINATED -> FINISHED, with the run record (best scores, metrics.json, ranks, best
    checkpoint) logged from the trial's last checkpoint, else best scores from the run's own
    epoch history; also for a run the stop left KILLED, or FAILED by an error raised while its
    worker was being torn down (Tune had ended the trial, so the error is not the trial's);
    ERROR -> FAILED with tag `error`; anything else (an interrupted sweep) -> KILLED, reopened on
    resume.
    """
    for trial_id, run in runs_by_trial.items():
        outcome = outcomes.get(trial_id, {})
        if run.info.status == "RUNNING" or _stopped_run_of_finished_trial(run, outcome):
            _settle_one(client, run, outcome)


def _stopped_run_of_finished_trial(run, outcome: dict[str, Any]) -> bool:
    """A trial Tune ended normally (TERMINATED) whose run is not FINISHED with scores: the
    scheduler's stop tore the worker down while the trainer was still closing its run."""
    return outcome.get("status") == "TERMINATED" and (
        run.info.status != "FINISHED" or BEST_SUMR not in run.data.metrics)


def _best_from_history(client: MlflowClient, run) -> dict[str, float]:
    """`best/*` scores rebuilt from the run's own per-epoch `val/*` and `diag/*` history,
    at the epoch with the highest `val/SumR` (the earliest on a tie); {} without history."""
    sumr = client.get_metric_history(run.info.run_id, VAL_SUMR)
    if not sumr:
        return {}
    best_epoch = max(sumr, key=lambda m: (m.value, -m.step)).step
    best = {"best_epoch": float(best_epoch)}
    for key in run.data.metrics:
        section, _, name = key.partition("/")
        if section in ("val", "diag"):
            at_best = [m.value for m in client.get_metric_history(run.info.run_id, key)
                       if m.step == best_epoch]
            if at_best:
                best[f"best/{name}"] = at_best[-1]
    return best


def _settle_one(client: MlflowClient, run, outcome: dict[str, Any]) -> None:
    tracker = RunTracker(client, run.info.run_id)
    status = outcome.get("status")
    if status == "TERMINATED":
        if not _log_record_from_checkpoint(tracker, outcome.get("checkpoint")):
            best = _best_from_history(client, run)
            if best:
                tracker.log_metrics(best, step=int(best.get("best_epoch", 0)))
        if "error" in run.data.tags:
            client.delete_tag(run.info.run_id, "error")
        tracker.set_tags({STOP_REASON_TAG: "the scheduler stopped the trial; run closed by the sweep driver"})
        tracker.finish("FINISHED")
    elif status == "ERROR":
        tracker.finish("FAILED", error=outcome.get("error") or "the trial's worker failed")
    else:
        tracker.finish("KILLED", error="the sweep was interrupted; resume it to continue this run")
