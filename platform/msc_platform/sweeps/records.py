"""The MLflow parent run of a sweep, and the tracking URI every process of the sweep uses.

The parent run (tags msc.role=sweep-parent, msc.sweep; msc.ablation in grid mode) holds the spec,
the search space or grid, and at the end the best trial's config and scores. The trials' child
runs are msc_platform.sweeps.trial_runs's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from msc_platform.names import (
    ABLATION_TAG,
    BEST_RUN_TAG,
    BEST_TRIAL_TAG,
    ROLE_TAG,
    SWEEP_BASE_CONFIG_ARTIFACT,
    SWEEP_BEST_ARTIFACT,
    SWEEP_PARENT_ROLE,
    SWEEP_SPACE_ARTIFACT,
    SWEEP_TAG,
)
from msc_platform.run.config import to_yaml
from msc_platform.run.tracking import RunTracker, tracking_uri
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
