"""The MLflow run of each trial, owned by the sweep driver from its start to its final status.

The driver is the only process that decides a trial run's status, from Tune's own view of the
trial, through `TrialRuns` (a `ray.tune.Callback`):

- `on_trial_start`: the run is created (named after the trial's values, tagged with the sweep,
  the trial id and, in grid mode, row and seed) or, for a retried or resumed trial, set back to
  RUNNING. Tune calls this before it sends the trial's work to its worker, so the worker always
  finds the run (`find_trial_run`) and only logs into it.
- `on_trial_recover`: a failed attempt that Tune retries from its last checkpoint (a crashed
  worker, a lost node); the run stays RUNNING and gets tags `msc.retries` and `msc.last_failure`.
- `on_trial_complete`: FINISHED, with the closing record (best scores, metrics.json, ranks,
  best checkpoint) read from the trial's last checkpoint; tag `stop_reason` when the scheduler
  stopped the trial before its last epoch.
- `on_trial_error`: FAILED, with the trial's error line in tag `error`.

`settle_trial_runs` is the final pass after Tune returns: it closes what the callbacks could not
(a driver interrupted or killed mid-sweep: its trials' runs end KILLED and are set RUNNING again
by a resume; a trial the snapshot has TERMINATED but whose run a dead driver left open).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import ray
from mlflow.tracking import MlflowClient
from ray import tune

from msc_platform.names import (
    ABLATION_TAG,
    BEST_EPOCH,
    BEST_PREFIX,
    BEST_SUMR,
    DIAG_PREFIX,
    ERROR_TAG,
    PARENT_RUN_TAG,
    ROW_TAG,
    SEED_TAG,
    STOP_REASON_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    VAL_PREFIX,
    VAL_SUMR,
)
from msc_platform.run.checkpoint import CheckpointError, load_checkpoint
from msc_platform.run.tracking import RunTracker, get_or_create_experiment
from msc_platform.run.train import LAST, log_run_record
from msc_platform.sweeps.spec import ROW_KEY, SEED_KEY, SweepSpec

FINAL_EPOCH_KEY = "final_epoch"  # in a trial's Tune results: the trainer's own last epoch

RETRIES_TAG = "msc.retries"
LAST_FAILURE_TAG = "msc.last_failure"
TERMINATED, ERROR = "TERMINATED", "ERROR"
INTERRUPTED = "the sweep was interrupted; resume it to continue this run"
ORPHAN_TAG = "msc.orphan"
ORPHANED = ("its trial is not in the sweep's saved state (the driver died before saving it); the "
            "resume ran the work again as another trial")
QUALIFIED_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*(?:Error|Exception|Interrupt)\b)")


def trial_number(trial) -> int:
    """The trial's index in its sweep: Tune's experiment tag starts with it (`3_model.tcp=True`)."""
    head = (trial.experiment_tag or "").split("_", 1)[0]
    return int(head) if head.isdigit() else 0


def _short_value(key: str, value: Any) -> str:
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, bool):
        return name if value else f"no_{name}"
    if isinstance(value, float):
        return f"{name}={value:.3g}"
    return f"{name}={value}"


def trial_run_name(spec: SweepSpec, number: int, params: dict[str, Any]) -> str:
    """`t03 sim_thr=0.81 tcp cbva=adaptive` (search) or `t03 full seed=1` (grid), for trial
    `number` of the sweep with Tune params `params`."""
    prefix = f"t{number:02d}"
    if spec.is_grid:
        return f"{prefix} {params[ROW_KEY]} seed={params[SEED_KEY]}"
    return " ".join([prefix, *(_short_value(key, params[key]) for key in spec.space if key in params)])


def trial_run_tags(spec: SweepSpec, trial_id: str, params: dict[str, Any]) -> dict[str, str]:
    """The tags a trial's run is created with: msc.sweep, msc.trial_id (+ ablation, row, seed)."""
    tags = {SWEEP_TAG: spec.name, TRIAL_TAG: trial_id}
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
        filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and "
                      f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'")
    return runs[0] if runs else None


def trial_runs(client: MlflowClient, experiment: str, parent_run_id: str) -> list:
    """Every child run of the sweep's parent run."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], max_results=10000,
                              filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'")


def error_line(trial) -> str:
    """The last line of a failed trial's exception (what tag `error` and the summary show),
    with the exception's module path dropped (`pkg.mod.NonFiniteLossError: x` -> `NonFiniteLossError: x`)."""
    lines = (error_text(trial) or "").strip().splitlines()
    return short_error(lines[-1] if lines else "the trial's worker failed")


def error_text(trial) -> str | None:
    """The trial's error as Tune recorded it, or None. Tune writes it first into the trial's
    local folder on the driver and copies it to the storage path later, where `get_error()`
    reads it; so the local file is read first (a callback runs before that copy). The local
    folder is known only while Ray runs (the final pass runs after it stopped)."""
    local = trial.error_file if ray.is_initialized() else None
    if local and Path(local).is_file():
        return Path(local).read_text()
    error = trial.get_error()
    return str(error) if error else None


def short_error(line: str) -> str:
    """`line` with a leading exception's module path dropped, at most 1000 characters."""
    return QUALIFIED_EXCEPTION.sub(r"\1", line)[:1000]


class TrialRuns(tune.Callback):
    """The driver's owner of every trial run's status (see the module docstring).

    Holds only what pickles (Tune stores it with the experiment, and a resume unpickles it);
    the MLflow client is made on first use.
    """

    def __init__(self, spec: SweepSpec, parent_run_id: str, tracking_uri: str):
        self.spec, self.parent_run_id, self.tracking_uri = spec, parent_run_id, tracking_uri
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def open_run(self, trial) -> str:
        """Create the trial's run, or set its existing run back to RUNNING; returns the run id."""
        trial_id, params = trial.trial_id, dict(trial.config)
        run = find_trial_run(self.client, self.spec.mlflow_experiment, self.parent_run_id, trial_id)
        if run is not None:
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            for stale in (ERROR_TAG, STOP_REASON_TAG):
                if stale in run.data.tags:
                    self.client.delete_tag(run.info.run_id, stale)
            return run.info.run_id
        experiment_id = get_or_create_experiment(self.client, self.spec.mlflow_experiment,
                                                 self.tracking_uri)
        tags = {**trial_run_tags(self.spec, trial_id, params), PARENT_RUN_TAG: self.parent_run_id}
        name = trial_run_name(self.spec, trial_number(trial), params)
        return self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    def _run_of(self, trial):
        return find_trial_run(self.client, self.spec.mlflow_experiment, self.parent_run_id,
                              trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.open_run(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        run = self._run_of(trial)
        if run is not None:
            tracker = RunTracker(self.client, run.info.run_id)
            tracker.set_tags({RETRIES_TAG: trial.run_metadata.num_failures,
                              LAST_FAILURE_TAG: error_line(trial)})

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        run = self._run_of(trial)
        if run is not None:
            close_finished(self.client, run, trial.checkpoint, stop_reason(trial, self.spec))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        run = self._run_of(trial)
        if run is not None:
            RunTracker(self.client, run.info.run_id).finish("FAILED", error=error_line(trial))


def stop_reason(trial, spec: SweepSpec) -> str | None:
    """Why a completed trial ended before the trainer's own last epoch, or None when it did not.

    The trainer marks its last epoch (all epochs run, or early stopping by train.patience) in
    the result it reports; a trial completed after any other epoch was stopped by the
    scheduler. (Tune's `done` cannot tell: it is set on a scheduler's stop too.)
    """
    last = trial.last_result or {}
    reported = last.get("epoch")  # 1-based; absent when the trial never reported
    if reported is None or last.get(FINAL_EPOCH_KEY) or int(reported) >= spec.base.train.epochs:
        return None
    return f"stopped early by the sweep's scheduler after epoch {int(reported) - 1}"


def close_finished(client: MlflowClient, run, checkpoint, reason: str | None) -> None:
    """End `run` FINISHED with its closing record from `checkpoint` (the trial's last Tune
    checkpoint; without one, best scores rebuilt from the run's history), stale tags removed."""
    tracker = RunTracker(client, run.info.run_id)
    if not log_record_from_checkpoint(tracker, checkpoint):
        best = best_from_history(client, run)
        if best:
            tracker.log_metrics(best, step=int(best.get(BEST_EPOCH, 0)))
    if ERROR_TAG in run.data.tags:
        client.delete_tag(run.info.run_id, ERROR_TAG)
    if reason:
        tracker.set_tags({STOP_REASON_TAG: reason})
    tracker.finish("FINISHED")


def log_record_from_checkpoint(tracker: RunTracker, checkpoint) -> bool:
    """Log the run record (train.log_run_record) from a trial's Tune checkpoint.

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


def best_from_history(client: MlflowClient, run) -> dict[str, float]:
    """`best/*` scores rebuilt from the run's own per-epoch `val/*` and `diag/*` history,
    at the epoch with the highest `val/SumR` (the earliest on a tie); {} without history."""
    sumr = client.get_metric_history(run.info.run_id, VAL_SUMR)
    if not sumr:
        return {}
    best_epoch = max(sumr, key=lambda m: (m.value, -m.step)).step
    best = {BEST_EPOCH: float(best_epoch)}
    for key in run.data.metrics:
        if key.startswith((VAL_PREFIX, DIAG_PREFIX)):
            at_best = [m.value for m in client.get_metric_history(run.info.run_id, key)
                       if m.step == best_epoch]
            if at_best:
                best[BEST_PREFIX + key.split("/", 1)[1]] = at_best[-1]
    return best


def settle_trial_runs(client: MlflowClient, runs_by_trial: dict[str, Any],
                      outcomes: dict[str, dict[str, Any]]) -> None:
    """The final pass: give every trial run the status Tune's snapshot implies, where the
    callbacks did not (call it after Tune returned; no trial can still be writing).

    outcomes: {trial_id: {"status": Tune status, "error": str | None, "checkpoint": the
    trial's last ray.tune.Checkpoint or None, "stop_reason": str | None}}.
    TERMINATED -> FINISHED with its record, unless already FINISHED with scores; ERROR ->
    FAILED; anything else (an interrupted sweep) -> KILLED, set RUNNING again by a resume.
    A run whose trial is not in the saved state at all is an orphan (`retire_orphan`).
    """
    for trial_id, run in runs_by_trial.items():
        if trial_id not in outcomes:
            retire_orphan(client, run)
            continue
        outcome = outcomes[trial_id]
        status = outcome.get("status")
        if status == TERMINATED and not _closed_with_scores(run):
            close_finished(client, run, outcome.get("checkpoint"), outcome.get("stop_reason"))
        elif status == ERROR and run.info.status != "FAILED":
            RunTracker(client, run.info.run_id).finish(
                "FAILED", error=outcome.get("error") or "the trial's worker failed")
        elif status not in (TERMINATED, ERROR) and run.info.status == "RUNNING":
            RunTracker(client, run.info.run_id).finish("KILLED", error=INTERRUPTED)


def retire_orphan(client: MlflowClient, run) -> None:
    """Close and delete (MLflow's soft delete: restorable, hidden from the UI and from searches)
    the run of a trial that Tune's saved state does not know: a driver killed (SIGKILL, its Ray
    lost) after it started the trial but before Tune saved its state. The resume has run that
    work again as another trial in its own run, so keeping this one would duplicate it."""
    tracker = RunTracker(client, run.info.run_id)
    tracker.set_tags({ORPHAN_TAG: ORPHANED})
    if run.info.status == "RUNNING":
        tracker.finish("KILLED", error=ORPHANED)
    client.delete_run(run.info.run_id)


def _closed_with_scores(run) -> bool:
    best = run.data.metrics.get(BEST_SUMR)
    return run.info.status == "FINISHED" and best is not None and not math.isnan(best)
