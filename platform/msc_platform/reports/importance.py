"""Optuna parameter importances of a sweep, rebuilt from the MLflow record.

The complete trials' varied params and best/SumR are added to an in-memory Optuna study
(`create_trial` + `add_trials`), with distributions inferred from the logged values: numbers
become Int/FloatDistribution over their observed range, everything else (bools, choices)
a CategoricalDistribution. Importances come from Optuna's fANOVA evaluator, seeded.
"""
from __future__ import annotations

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.importance import FanovaImportanceEvaluator, get_param_importances

from msc_platform.names import BEST_SUMR
from msc_platform.reports.records import RunRecord

MIN_TRIALS = 5
TARGET_METRIC = BEST_SUMR


def _parse(value: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            continue
    return value


def infer_distributions(runs: list[RunRecord], keys: list[str]) -> dict[str, tuple[BaseDistribution, dict]]:
    """For each key with at least two distinct values: (distribution, {run_id: value})."""
    inferred = {}
    for key in keys:
        values = {run.run_id: _parse(run.params[key]) for run in runs if key in run.params}
        distinct = set(values.values())
        if len(values) < len(runs) or len(distinct) < 2:
            continue
        inferred[key] = _distribution(distinct, values)
    return inferred


def _distribution(distinct: set, values: dict) -> tuple[BaseDistribution, dict]:
    if all(isinstance(v, int) and not isinstance(v, bool) for v in distinct):
        return IntDistribution(min(distinct), max(distinct)), values
    if all(isinstance(v, (int, float)) for v in distinct):
        return FloatDistribution(float(min(distinct)), float(max(distinct))), {k: float(v) for k, v in values.items()}
    choices = sorted(str(v) for v in distinct)
    return CategoricalDistribution(choices), {k: str(v) for k, v in values.items()}


def param_importances(runs: list[RunRecord], keys: list[str], seed: int = 0) -> tuple[dict[str, float], str]:
    """Normalised fANOVA importances of `keys` for best/SumR over the complete `runs`.

    Returns (importances, note); importances is empty and the note says why when fewer than
    MIN_TRIALS complete trials, no varied parameter or no varied score are available (fANOVA
    raises on a target without variance).
    """
    complete = [run for run in runs if run.complete and run.metric(TARGET_METRIC) is not None]
    if len(complete) < MIN_TRIALS:
        return {}, f"importances skipped: {len(complete)} complete trials, need at least {MIN_TRIALS}"
    if len({run.metric(TARGET_METRIC) for run in complete}) < 2:
        return {}, f"importances skipped: every complete trial has the same {TARGET_METRIC}"
    inferred = infer_distributions(complete, keys)
    if not inferred:
        return {}, "importances skipped: no parameter varies across the complete trials"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.add_trials([
        optuna.trial.create_trial(
            params={key: values[run.run_id] for key, (_, values) in inferred.items()},
            distributions={key: dist for key, (dist, _) in inferred.items()},
            value=run.metric(TARGET_METRIC),
        )
        for run in complete
    ])
    importances = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    return dict(importances), f"fANOVA importances of {TARGET_METRIC} over {len(complete)} trials"
