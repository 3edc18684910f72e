"""Ray Tune sweeps of MSC: search mode (Optuna TPE + ASHA) and grid mode (ablations: rows x seeds).

`run_sweep(spec)` runs every trial of a `SweepSpec` (see msc_platform.sweeps.spec) through a Ray
Tune `Tuner`: one MLflow parent run per sweep and one child run per trial, per-epoch reports
with checkpoints, retries from the last checkpoint (FailureConfig), at most
`max_concurrent_trials` at a time. Results go to `<storage>/<name>-<time>/` (storage: the spec's
`storage_path`, `--storage`, or `runs/sweeps/<name>` under the working directory).
`run_sweep(spec, resume=True)` continues the latest interrupted sweep of that storage with
`Tuner.restore`, keeping the searcher's history and never rerunning finished trials.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from msc_platform.names import BEST_PREFIX, REGISTERED_MODEL_TAG, TRIAL_TAG
from msc_platform.run.config import apply_overrides
from msc_platform.run.data import prepare_data
from msc_platform.run.registry import ModelRecord, register_best_model
from msc_platform.run.tracking import RunTracker
from msc_platform.run.train import BEST
from msc_platform.sweeps.ray_session import ray_session
from msc_platform.sweeps.records import absolute_tracking_uri, finish_parent_run, open_parent_run
from msc_platform.sweeps.spec import (
    ROW_KEY,
    SEED_KEY,
    SweepSpec,
    SweepSpecError,
    load_sweep_spec,
    trial_overrides,
)
from msc_platform.sweeps.trial import RUN_ID_KEY, TrialContext, run_trial
from msc_platform.sweeps.trial_runs import (
    TrialRuns,
    error_line,
    settle_trial_runs,
    stop_reason,
    trial_runs,
)

__all__ = ["SweepOutcome", "SweepSpec", "SweepSpecError", "TrialSummary", "load_sweep_spec",
           "run_sweep"]

STATE_FILE = "msc_sweep.json"
TIME_ATTR = "epoch"
DEFAULT_STORAGE = Path("runs") / "sweeps"


@dataclass
class TrialSummary:
    """One trial as the sweep ended it."""

    trial_id: str
    status: str  # Tune's: TERMINATED, ERROR, or PENDING/PAUSED/RUNNING when interrupted
    params: dict[str, Any]  # Tune's params: drawn values, or {"row": name, "train.seed": s} in a grid
    overrides: dict[str, Any]  # the trial's dotted config values
    best: float | None  # best value of the sweep metric over its epochs
    epochs: int
    run_id: str | None
    node_id: str | None
    error: str | None
    failures: int = 0  # times Tune retried it (worker crash, error)


@dataclass
class SweepOutcome:
    """What run_sweep returns; `best_*` are empty when no trial finished."""

    name: str
    experiment: str
    parent_run_id: str
    best_config: dict[str, Any]
    best_metrics: dict[str, Any]
    storage_dir: str
    trials: list[TrialSummary] = field(default_factory=list)
    interrupted: bool = False
    registered_model: str | None = None  # "msc-<collection>/<version>" of the best trial's model
    experiment_id: str | None = None  # the MLflow experiment's id (for UI links)


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """The Tune param space: distributions (search mode) or grid_search over rows and seeds."""
    if spec.is_grid:
        return {ROW_KEY: tune.grid_search(list(spec.rows)), SEED_KEY: tune.grid_search(spec.seeds)}
    makers = {"uniform": tune.uniform, "loguniform": tune.loguniform, "choice": tune.choice,
              "randint": lambda low, high: tune.randint(low, high + 1)}  # inclusive high
    return {key: (makers[d.kind](d.args) if d.kind == "choice" else makers[d.kind](*d.args))
            for key, d in spec.space.items()}


def tune_config(spec: SweepSpec) -> tune.TuneConfig:
    """Searcher, scheduler and concurrency; grid mode has neither searcher nor scheduler."""
    if spec.is_grid:
        return tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.max_concurrent_trials,
                               reuse_actors=spec.reuse_actors)
    scheduler = None
    if spec.scheduler.type == "asha":
        scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=spec.base.train.epochs,
                                  grace_period=min(spec.scheduler.grace_period, spec.base.train.epochs),
                                  reduction_factor=spec.scheduler.reduction_factor)
    return tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                           search_alg=OptunaSearch(seed=spec.seed),
                           scheduler=scheduler, max_concurrent_trials=spec.max_concurrent_trials,
                           reuse_actors=spec.reuse_actors)


def storage_root(spec: SweepSpec, storage: str | None = None) -> str:
    """Where the sweep's Tune experiments live: `storage`, the spec's, or runs/sweeps/<name>."""
    chosen = storage or spec.storage_path
    if chosen and "://" in chosen:
        return chosen
    return str(Path(chosen).resolve() if chosen else (DEFAULT_STORAGE / spec.name).resolve())


def _filesystem(root: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if "://" in root:
        return pyarrow.fs.FileSystem.from_uri(root)
    return pyarrow.fs.LocalFileSystem(), root


def latest_experiment(root: str, name: str) -> str | None:
    """The newest `<name>-<time>` experiment under `root` that Tune can restore, or None."""
    fs, base = _filesystem(root)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(base, allow_not_found=True))
    except OSError:
        return None
    names = sorted(e.base_name for e in entries
                   if e.type == pyarrow.fs.FileType.Directory and e.base_name.startswith(f"{name}-"))
    for candidate in reversed(names):
        path = f"{root.rstrip('/')}/{candidate}"
        if tune.Tuner.can_restore(path):
            return path
    return None


def _write_state(root: str, experiment_name: str, state: dict[str, Any]) -> None:
    fs, base = _filesystem(root)
    folder = f"{base.rstrip('/')}/{experiment_name}"
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(f"{folder}/{STATE_FILE}") as out:
        out.write(json.dumps(state, indent=2).encode())


def _read_state(experiment_path: str) -> dict[str, Any]:
    fs, base = _filesystem(experiment_path)
    try:
        with fs.open_input_stream(f"{base.rstrip('/')}/{STATE_FILE}") as handle:
            return json.loads(handle.read().decode())
    except (OSError, ValueError) as err:
        raise SweepSpecError(f"{experiment_path}/{STATE_FILE}: cannot read the sweep state: {err}") from err


def _prepare_local_data(spec: SweepSpec) -> None:
    """Generate (synthetic) and cache the data once in the driver, so concurrent trials never race.

    Every clip-token variant the trials can use is prepared; raises what prepare_data raises.
    """
    variants = {spec.base.model.clip_tokens}
    if "model.clip_tokens" in spec.space:
        variants |= set(spec.space["model.clip_tokens"].args)
    variants |= {row["model.clip_tokens"] for row in spec.rows.values() if "model.clip_tokens" in row}
    for clip_tokens in sorted(variants):
        prepare_data(apply_overrides(spec.base, {"model.clip_tokens": clip_tokens}))


def _run_config(spec: SweepSpec, context: TrialContext, root: str, experiment_name: str,
                verbose: int) -> tune.RunConfig:
    """Storage, retries, checkpoints kept, and the owner of the trials' MLflow runs (TrialRuns;
    Tune pickles it with the experiment, so a resume has it back)."""
    return tune.RunConfig(
        name=experiment_name, storage_path=root, verbose=verbose,
        callbacks=[TrialRuns(spec, context.parent_run_id, context.tracking_uri)],
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))


def _trainable(spec: SweepSpec, context: TrialContext):
    resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(run_trial, context=context), resources)


def _start_or_restore(spec: SweepSpec, root: str, resume: bool, uri: str,
                      address: str | None) -> tuple[str, str, RunTracker, str]:
    """(experiment name, path, parent run, tracking URI) of a new sweep or of the one to resume."""
    if resume:
        path = latest_experiment(root, spec.name)
        if path is None:
            raise SweepSpecError(f"{spec.path}: nothing to resume: no restorable sweep '{spec.name}-*' "
                                 f"under {root}")
        state = _read_state(path)
        parent = open_parent_run(spec, state["tracking_uri"], run_id=state["parent_run_id"])
        return path.rstrip("/").rsplit("/", 1)[-1], path, parent, state["tracking_uri"]
    experiment_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = open_parent_run(spec, uri)
    _write_state(root, experiment_name, {"parent_run_id": parent.run_id, "tracking_uri": uri,
                                         "experiment": spec.mlflow_experiment,
                                         "spec": str(spec.path), "address": address})
    return experiment_name, f"{root.rstrip('/')}/{experiment_name}", parent, uri


def run_sweep(spec: SweepSpec, *, address: str | None = None, resume: bool = False,
              storage: str | None = None, verbose: int = 1) -> SweepOutcome:
    """Run (or, with `resume`, continue) the sweep of `spec`; returns its outcome.

    address: a Ray cluster to join (else $RAY_ADDRESS, else a local Ray this call starts).
    storage: where Tune keeps results (overrides the spec's storage_path).
    Raises SweepSpecError when there is nothing to resume, and what Ray raises when the cluster
    cannot be reached. Failed trials do not raise: they are in the outcome's `trials`.
    """
    # Tune snapshots its state whenever a trial checkpoints num_to_keep times: expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    uri = absolute_tracking_uri(spec.base.tracking.uri)
    root = storage_root(spec, storage)
    with ray_session(address) as joined:
        if not joined:
            _prepare_local_data(spec)
        experiment_name, path, parent, uri = _start_or_restore(spec, root, resume, uri, joined)
        context = TrialContext(spec=spec, parent_run_id=parent.run_id, tracking_uri=uri)
        _make_tuner(spec, context, root, experiment_name, path, resume, verbose).fit()
    return _conclude(spec, parent, saved_trials(path), path)


def saved_trials(path: str) -> list:
    """The trials as Tune's last experiment snapshot has them: what a resume would continue.

    (After an interrupt Tune stops the live trials in memory, so only the snapshot tells the
    finished trials from the interrupted ones.)
    """
    return tune.ExperimentAnalysis(path).trials


def _make_tuner(spec: SweepSpec, context: TrialContext, root: str, experiment_name: str,
                path: str, resume: bool, verbose: int) -> tune.Tuner:
    trainable = _trainable(spec, context)
    if resume:
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                  param_space=param_space(spec))
    return tune.Tuner(trainable, param_space=param_space(spec), tune_config=tune_config(spec),
                      run_config=_run_config(spec, context, root, experiment_name, verbose))


def _summaries(spec: SweepSpec, trials, runs_by_trial: dict[str, Any]) -> list[TrialSummary]:
    summaries = []
    for trial in trials:
        last = trial.last_result or {}
        run = runs_by_trial.get(trial.trial_id)
        best = _best_metric(run, spec) if run is not None else None
        error = _error_line(trial)
        summaries.append(TrialSummary(
            trial_id=trial.trial_id, status=trial.status, params=dict(trial.config),
            overrides=trial_overrides(spec, trial.config), best=best,
            epochs=int(last.get(TIME_ATTR, 0)), run_id=run.info.run_id if run else last.get(RUN_ID_KEY),
            node_id=last.get("node_id"), error=error,
            failures=trial.run_metadata.num_failures))
    return summaries


def _best_metric(run, spec: SweepSpec) -> float | None:
    """The trial's best value of the sweep metric, from its MLflow child run."""
    best = run.data.metrics.get(f"best/{spec.metric}")
    if best is None:
        best = run.data.metrics.get(f"val/{spec.metric}")
    return best if best is not None and math.isfinite(best) else None


def _error_line(trial) -> str | None:
    """The last line of an errored trial's exception; None for other trials."""
    return error_line(trial) if trial.status == "ERROR" else None


def _outcomes(spec: SweepSpec, trials) -> dict[str, dict[str, Any]]:
    return {trial.trial_id: {"status": trial.status, "error": _error_line(trial),
                             "checkpoint": trial.checkpoint,
                             "stop_reason": stop_reason(trial, spec)}
            for trial in trials}


def _pick_best(spec: SweepSpec, summaries: list[TrialSummary]) -> TrialSummary | None:
    done = [s for s in summaries if s.status == "TERMINATED" and s.best is not None]
    if not done:
        return None
    sign = 1 if spec.mode == "max" else -1
    return max(done, key=lambda s: sign * s.best)


def _conclude(spec: SweepSpec, parent: RunTracker, trials, path: str) -> SweepOutcome:
    """The final pass over the child runs, then the best trial on the parent run, its best.pt
    registered as msc-<collection>@best (a finished sweep with tracking.register_model) and the
    outcome."""
    client: MlflowClient = parent.client
    settle_trial_runs(client, _runs_by_trial(client, spec, parent.run_id), _outcomes(spec, trials))
    runs_by_trial = _runs_by_trial(client, spec, parent.run_id)
    summaries = _summaries(spec, trials, runs_by_trial)
    interrupted = len(summaries) < spec.total_trials or any(
        s.status not in ("TERMINATED", "ERROR") for s in summaries)
    best = _pick_best(spec, summaries)
    best_metrics = dict(runs_by_trial[best.trial_id].data.metrics) if best else {}
    counts = {status.lower(): sum(s.status == status for s in summaries)
              for status in ("TERMINATED", "ERROR")}
    record = {"trial_id": best.trial_id, "run_id": best.run_id, "config": best.overrides,
              "metrics": {k[len(BEST_PREFIX):]: v for k, v in best_metrics.items()
                          if k.startswith(BEST_PREFIX)}} if best else None
    finish_parent_run(parent, record, counts, "KILLED" if interrupted else "FINISHED")
    registered = None
    if best and not interrupted and spec.base.tracking.register_model:
        model = _register_best(client, best, trials)
        if model is not None:
            registered = f"{model.name}/{model.version}"
            parent.set_tags({REGISTERED_MODEL_TAG: registered})
    return SweepOutcome(name=spec.name, experiment=spec.mlflow_experiment,
                        parent_run_id=parent.run_id, best_config=best.overrides if best else {},
                        best_metrics=best_metrics, storage_dir=path, trials=summaries,
                        interrupted=interrupted, registered_model=registered,
                        experiment_id=client.get_run(parent.run_id).info.experiment_id)


def _register_best(client: MlflowClient, best: TrialSummary, trials) -> ModelRecord | None:
    """Register best.pt of the best trial's last Tune checkpoint as a model of its child run
    (msc-<collection>, alias `best` moved to it); None when the trial has no run or no best.pt
    (noted on stderr) or the store has no registry. Raises what MLflow raises."""
    trial = next((t for t in trials if t.trial_id == best.trial_id), None)
    checkpoint = trial.checkpoint if trial is not None else None
    if checkpoint is None or not best.run_id:
        print(f"note: best trial {best.trial_id} left no checkpoint or run: no model registered",
              file=sys.stderr)
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / BEST
        if not path.is_file():
            print(f"note: best trial {best.trial_id}: no {BEST} in its last checkpoint: "
                  "no model registered", file=sys.stderr)
            return None
        return register_best_model(client, best.run_id, path)


def _runs_by_trial(client: MlflowClient, spec: SweepSpec, parent_run_id: str) -> dict[str, Any]:
    return {run.data.tags.get(TRIAL_TAG): run
            for run in trial_runs(client, spec.mlflow_experiment, parent_run_id)}
