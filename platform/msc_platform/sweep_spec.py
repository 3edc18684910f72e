"""Sweep specs: YAML files in experiments/sweeps/ (search mode) and experiments/ablations/ (grid mode).

A spec names a base training config (relative to the spec file), dotted overrides for it, and
either a search `space` (Optuna TPE + ASHA) or a grid of `rows` x `seeds` (Tune's own grid, no
searcher, no early stopping). Everything is checked when the spec is loaded: unknown keys,
wrong types, and every value a trial could draw (range ends, each choice, each row) applied to
the base config, so a bad spec fails before Ray starts. Errors are `SweepSpecError` naming the
file, the key and the problem.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from msc_platform.config import (SECTIONS, ConfigError, ExperimentConfig, apply_overrides, load_config,
                                 parse_overrides)

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
SCHEDULERS = ("asha", "none")
SPEC_KEYS = ("name", "base_config", "overrides", "metric", "mode", "num_samples",
             "max_concurrent_trials", "seed", "resources", "max_failures", "storage_path",
             "scheduler", "space", "rows", "seeds", "experiment", "description", "reuse_actors")
ROW_KEY = "row"
SEED_KEY = "train.seed"


class SweepSpecError(ValueError):
    """A sweep spec is invalid; the message names the file, the key and the problem."""


@dataclass
class Distribution:
    """One searched hyperparameter: `kind` in DISTRIBUTIONS with its `args`."""

    kind: str
    args: list[Any]

    def values_to_check(self) -> list[Any]:
        """The values whose validity implies every draw's: the range ends or every choice."""
        return list(self.args)


@dataclass
class SchedulerSpec:
    """ASHA settings on the per-epoch metric; `type: none` switches early stopping off."""

    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass
class SweepSpec:
    """A validated sweep spec; `base` is the resolved base training config with overrides applied."""

    name: str
    path: Path
    base_config: Path
    base: ExperimentConfig
    overrides: dict[str, Any]
    metric: str = "SumR"
    mode: str = "max"
    num_samples: int = 8
    max_concurrent_trials: int = 2
    seed: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_failures: int = 2
    reuse_actors: bool = True  # run the next trial in a finished trial's worker (no new process)
    storage_path: str | None = None
    experiment: str | None = None
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    space: dict[str, Distribution] = field(default_factory=dict)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)

    @property
    def is_grid(self) -> bool:
        """Grid mode (ablations: rows x seeds) rather than search mode."""
        return bool(self.rows)

    @property
    def total_trials(self) -> int:
        """How many trials the sweep runs in all."""
        return len(self.rows) * len(self.seeds) if self.is_grid else self.num_samples

    @property
    def mlflow_experiment(self) -> str:
        """The MLflow experiment of the parent and child runs."""
        return self.experiment or self.base.tracking.experiment


def _fail(path: Path, key: str, problem: str) -> SweepSpecError:
    return SweepSpecError(f"{path}: {key}: {problem}")


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise SweepSpecError(f"{path}: cannot read sweep spec: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise SweepSpecError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise SweepSpecError(f"{path}: expected a mapping of sweep settings, got {type(data).__name__}")
    return data


def split_overrides(overrides: list[str], path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split CLI `key=value` items into (spec settings, training-config overrides).

    Keys whose first part is a config section (data, model, train, tracking) go to the training
    config; the others set spec keys (`num_samples=4`, `scheduler.grace_period=2`).
    Raises SweepSpecError for an item without '='.
    """
    try:
        parsed = parse_overrides(overrides)
    except ConfigError as err:
        raise SweepSpecError(f"{path}: {err}") from None
    spec_items, config_items = {}, {}
    for key, value, _ in parsed:
        target = config_items if key.split(".", 1)[0] in SECTIONS else spec_items
        target[key] = value
    return spec_items, config_items


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    head, _, rest = key.partition(".")
    if not rest:
        data[head] = value
        return
    child = data.get(head)
    if not isinstance(child, dict):
        child = {}
        data[head] = child
    _set_dotted(child, rest, value)


def _as_int(value: Any, path: Path, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, key, f"expected an integer, got {value!r}")
    if value < minimum:
        raise _fail(path, key, f"must be >= {minimum}, got {value}")
    return value


def _as_number(value: Any, path: Path, key: str, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, key, f"expected a finite number, got {value!r}")
    if value < minimum:
        raise _fail(path, key, f"must be >= {minimum}, got {value}")
    return float(value)


def _parse_distribution(raw: Any, path: Path, key: str) -> Distribution:
    """`{uniform: [lo, hi]}`, `{loguniform: [lo, hi]}`, `{randint: [lo, hi]}` or `{choice: [...]}`."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise _fail(path, key, f"expected one of {{{', '.join(DISTRIBUTIONS)}}}: [...], got {raw!r}")
    kind, args = next(iter(raw.items()))
    if kind not in DISTRIBUTIONS:
        raise _fail(path, key, f"unknown distribution {kind!r} (known: {list(DISTRIBUTIONS)})")
    if not isinstance(args, list) or not args:
        raise _fail(path, key, f"{kind}: expected a non-empty list, got {args!r}")
    if kind == "choice":
        return Distribution(kind, args)
    if len(args) != 2:
        raise _fail(path, key, f"{kind}: expected [low, high], got {args!r}")
    low, high = (_as_number(v, path, f"{key}.{kind}", -math.inf) for v in args)
    if not low < high:
        raise _fail(path, key, f"{kind}: low must be < high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise _fail(path, key, f"loguniform: low must be > 0, got {low}")
    if kind == "randint":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in args):
            raise _fail(path, key, f"randint: expected integer bounds, got {args!r}")
        return Distribution(kind, [int(low), int(high)])
    return Distribution(kind, [low, high])


def _parse_scheduler(raw: Any, path: Path) -> SchedulerSpec:
    if raw is None:
        return SchedulerSpec()
    if not isinstance(raw, dict):
        raise _fail(path, "scheduler", f"expected a mapping, got {raw!r}")
    unknown = set(raw) - {"type", "grace_period", "reduction_factor"}
    if unknown:
        raise _fail(path, f"scheduler.{sorted(unknown)[0]}", "unknown key "
                    "(known: type, grace_period, reduction_factor)")
    kind = raw.get("type", "asha")
    if kind not in SCHEDULERS:
        raise _fail(path, "scheduler.type", f"expected one of {list(SCHEDULERS)}, got {kind!r}")
    grace = _as_int(raw.get("grace_period", 1), path, "scheduler.grace_period", 1)
    factor = _as_number(raw.get("reduction_factor", 2.0), path, "scheduler.reduction_factor", 1.0)
    if factor <= 1:
        raise _fail(path, "scheduler.reduction_factor", f"must be > 1, got {factor}")
    return SchedulerSpec(kind, grace, factor)


def _parse_resources(raw: Any, path: Path) -> tuple[float, float]:
    if raw is None:
        return 1.0, 0.0
    if not isinstance(raw, dict) or set(raw) - {"cpu", "gpu"}:
        raise _fail(path, "resources", f"expected {{cpu: N, gpu: F}}, got {raw!r}")
    cpu = _as_number(raw.get("cpu", 1), path, "resources.cpu", 0.0)
    gpu = _as_number(raw.get("gpu", 0), path, "resources.gpu", 0.0)
    if cpu <= 0:
        raise _fail(path, "resources.cpu", f"must be > 0, got {cpu}")
    if gpu > 1 and gpu != int(gpu):
        raise _fail(path, "resources.gpu", f"a fraction must be <= 1 (or a whole number), got {gpu}")
    return cpu, gpu


def _resolve_base(raw: Any, path: Path) -> Path:
    if not isinstance(raw, str) or not raw:
        raise _fail(path, "base_config", f"expected a config file name, got {raw!r}")
    base = (path.parent / raw).resolve()
    if not base.is_file():
        raise _fail(path, "base_config", f"file {base} does not exist (paths are relative to the spec)")
    return base


def _check_values(base: ExperimentConfig, key: str, values: list[Any], path: Path, where: str) -> None:
    """Apply each value of `key` to `base`; raises SweepSpecError when the config rejects one."""
    for value in values:
        try:
            apply_overrides(base, {key: value})
        except ConfigError as err:
            raise _fail(path, f"{where}.{key}", str(err).split(": ", 1)[-1]) from None


def _parse_space(raw: Any, base: ExperimentConfig, path: Path) -> dict[str, Distribution]:
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, "space", f"expected a mapping of dotted config keys to distributions, got {raw!r}")
    space = {}
    for key, value in raw.items():
        space[key] = _parse_distribution(value, path, f"space.{key}")
        _check_values(base, key, space[key].values_to_check(), path, "space")
    return space


def _parse_rows(raw: Any, base: ExperimentConfig, path: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, "rows", f"expected a mapping of row names to override mappings, got {raw!r}")
    rows = {}
    for name, overrides in raw.items():
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise _fail(path, f"rows.{name}", f"expected a mapping of dotted config keys, got {overrides!r}")
        if SEED_KEY in overrides:
            raise _fail(path, f"rows.{name}.{SEED_KEY}", "seeds come from `seeds:`, not from a row")
        try:
            apply_overrides(base, overrides)
        except ConfigError as err:
            raise _fail(path, f"rows.{name}", str(err).split(": ", 1)[-1]) from None
        rows[str(name)] = dict(overrides)
    return rows


def _parse_seeds(raw: Any, path: Path) -> list[int]:
    if raw is None:
        raise _fail(path, "seeds", "grid mode needs a list of seeds")
    if not isinstance(raw, list) or not raw:
        raise _fail(path, "seeds", f"expected a non-empty list of integers, got {raw!r}")
    seeds = [_as_int(seed, path, "seeds", 0) for seed in raw]
    if len(set(seeds)) != len(seeds):
        raise _fail(path, "seeds", f"duplicate seeds in {seeds}")
    return seeds


def _load_base(base_path: Path, overrides: dict[str, Any], path: Path) -> ExperimentConfig:
    if not isinstance(overrides, dict):
        raise _fail(path, "overrides", f"expected a mapping of dotted config keys, got {overrides!r}")
    try:
        base = apply_overrides(load_config(base_path), overrides, source=f"{path} overrides")
    except ConfigError as err:
        raise SweepSpecError(f"{path}: base_config: {err}") from None
    if not base.tracking.enabled:
        raise _fail(path, "overrides.tracking.enabled", "sweeps need MLflow tracking switched on")
    return base


def load_sweep_spec(path: str | os.PathLike, overrides: list[str] | None = None) -> SweepSpec:
    """Read and validate a sweep spec; `overrides` are CLI `key=value` items (see split_overrides).

    Raises SweepSpecError naming the file, the key and the problem, before anything runs.
    """
    path = Path(path).resolve()
    data = _read_mapping(path)
    spec_items, config_items = split_overrides(list(overrides or []), path)
    for key, value in spec_items.items():
        _set_dotted(data, key, value)
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise _fail(path, unknown[0], f"unknown key (known: {list(SPEC_KEYS)})")
    config_overrides = {**(data.get("overrides") or {}), **config_items}
    base_path = _resolve_base(data.get("base_config"), path)
    base = _load_base(base_path, config_overrides, path)
    spec = SweepSpec(name=_parse_name(data.get("name", path.stem), path), path=path,
                     base_config=base_path, base=base, overrides=config_overrides)
    _parse_common(data, spec, path)
    _parse_mode(data, spec, path)
    return spec


def _parse_name(raw: Any, path: Path) -> str:
    if not isinstance(raw, str) or not raw or any(c in raw for c in "/\\ "):
        raise _fail(path, "name", f"expected a name without spaces or slashes, got {raw!r}")
    return raw


def _parse_common(data: dict[str, Any], spec: SweepSpec, path: Path) -> None:
    spec.metric = data.get("metric", "SumR")
    if not isinstance(spec.metric, str) or not spec.metric:
        raise _fail(path, "metric", f"expected a metric name such as SumR, got {spec.metric!r}")
    spec.mode = data.get("mode", "max")
    if spec.mode not in ("max", "min"):
        raise _fail(path, "mode", f"expected 'max' or 'min', got {spec.mode!r}")
    spec.max_concurrent_trials = _as_int(data.get("max_concurrent_trials", 2), path,
                                         "max_concurrent_trials", 1)
    spec.seed = _as_int(data.get("seed", 0), path, "seed", 0)
    spec.max_failures = _as_int(data.get("max_failures", 2), path, "max_failures", 0)
    spec.cpus_per_trial, spec.gpus_per_trial = _parse_resources(data.get("resources"), path)
    spec.reuse_actors = data.get("reuse_actors", True)
    if not isinstance(spec.reuse_actors, bool):
        raise _fail(path, "reuse_actors", f"expected true or false, got {spec.reuse_actors!r}")
    storage = data.get("storage_path")
    if storage is not None and (not isinstance(storage, str) or not storage):
        raise _fail(path, "storage_path", f"expected a path or URI, got {storage!r}")
    spec.storage_path = storage
    experiment = data.get("experiment")
    if experiment is not None and (not isinstance(experiment, str) or not experiment):
        raise _fail(path, "experiment", f"expected an MLflow experiment name, got {experiment!r}")
    spec.experiment = experiment


def _parse_mode(data: dict[str, Any], spec: SweepSpec, path: Path) -> None:
    has_space, has_rows = data.get("space") is not None, data.get("rows") is not None
    if has_space == has_rows:
        raise _fail(path, "space/rows", "give exactly one: `space` (search) or `rows` + `seeds` (grid)")
    if has_space:
        if data.get("seeds") is not None:
            raise _fail(path, "seeds", "only grid mode (`rows`) takes seeds; search with train.seed")
        spec.space = _parse_space(data["space"], spec.base, path)
        spec.num_samples = _as_int(data.get("num_samples", 8), path, "num_samples", 1)
        spec.scheduler = _parse_scheduler(data.get("scheduler"), path)
        return
    for key in ("num_samples", "scheduler"):
        if data.get(key) is not None:
            raise _fail(path, key, "grid mode runs every row x seed once, without a scheduler")
    spec.rows = _parse_rows(data["rows"], spec.base, path)
    spec.seeds = _parse_seeds(data.get("seeds"), path)
    spec.scheduler = SchedulerSpec(type="none")


def trial_overrides(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """The dotted config overrides of one trial from its Tune params (a row name in grid mode)."""
    if spec.is_grid:
        return {**spec.rows[params[ROW_KEY]], SEED_KEY: params[SEED_KEY]}
    return {key: params[key] for key in spec.space}


def trial_config(spec: SweepSpec, params: dict[str, Any]) -> ExperimentConfig:
    """The training config of one trial: the base config with the trial's overrides applied."""
    return apply_overrides(spec.base, trial_overrides(spec, params), source=f"{spec.path} trial")
