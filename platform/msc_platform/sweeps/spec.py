"""Sweep specs: YAML files in experiments/sweeps/ (search mode) and experiments/ablations/ (grid mode).

A spec names a base training config (relative to the spec file), dotted overrides for it, and
either a search `space` (Optuna TPE + ASHA) or a grid of `rows` x `seeds` (Tune's own grid, no
searcher, no early stopping). Like a config, a spec may name a `base:` spec (relative to itself)
whose keys it extends. Everything is checked when the spec is loaded: the keys of `SpecFile`
through pydantic (types, ranges, choices, unknown keys, `metric` one of SWEEP_METRICS), then every
value a trial could draw (range ends, each choice, each row) applied to the base config, so a bad
spec fails before Ray starts. Errors are `SweepSpecError`, one line per bad key naming the file,
the key and the problem.
"""
from __future__ import annotations

import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from model.validation import (
    FIELD_RULES,
    Bool,
    Float,
    Int,
    InvalidFields,
    NonEmptyText,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Text,
    validate_as,
)
from msc_platform.run.config import (
    SECTIONS,
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    load_config,
    parse_overrides,
    read_yaml,
)

# The metrics a trial reports to Tune each epoch that its MLflow run also records as best/<name>
# (the sweep's best trial is read from there).
SweepMetric = Literal["SumR", "R1", "R5", "R10", "R100"]
SWEEP_METRICS = typing.get_args(SweepMetric)
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
ROW_KEY = "row"
SEED_KEY = "train.seed"


class SweepSpecError(ValueError):
    """A sweep spec is invalid; one line per problem names the file, the key and the problem."""


def _low_below_high(bounds: list[float]) -> list[float]:
    if not bounds[0] < bounds[1]:
        raise ValueError("low must be < high")
    return bounds


def _positive_low(bounds: list[float]) -> list[float]:
    if bounds[0] <= 0:
        raise ValueError("low must be > 0")
    return bounds


def _whole_or_fraction(gpus: float) -> float:
    if gpus > 1 and gpus != int(gpus):
        raise ValueError("a fraction must be <= 1 (or a whole number)")
    return gpus


def _plain_name(name: str) -> str:
    if not name or any(c in name for c in "/\\ "):
        raise ValueError("expected a name without spaces or slashes")
    return name


def _unique(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds):
        raise ValueError("duplicate seeds")
    return seeds


Bounds = Annotated[list[Float], Field(min_length=2, max_length=2), AfterValidator(_low_below_high)]
IntBounds = Annotated[list[Int], Field(min_length=2, max_length=2), AfterValidator(_low_below_high)]
Seeds = Annotated[list[NonNegativeInt], Field(min_length=1), AfterValidator(_unique)]


@dataclass
class Distribution:
    """One searched hyperparameter: `kind` in DISTRIBUTIONS with its `args`."""

    kind: str
    args: list[Any]

    def values_to_check(self) -> list[Any]:
        """The values whose validity implies every draw's: the range ends or every choice."""
        return list(self.args)


@dataclass
class DistributionSpec:
    """One entry of `space:` as written: exactly one of `{uniform: [low, high]}`,
    `{loguniform: [low, high]}` (low > 0), `{randint: [low, high]}` or `{choice: [...]}`."""

    __pydantic_config__ = FIELD_RULES

    uniform: Bounds | None = None
    loguniform: Annotated[Bounds, AfterValidator(_positive_low)] | None = None
    randint: IntBounds | None = None
    choice: Annotated[list[Any], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DistributionSpec:
        if len(self._given()) != 1:
            raise ValueError(f"expected one of {{{', '.join(DISTRIBUTIONS)}}}: [...]")
        return self

    def _given(self) -> list[Distribution]:
        return [Distribution(kind, getattr(self, kind)) for kind in DISTRIBUTIONS
                if getattr(self, kind) is not None]

    def distribution(self) -> Distribution:
        """The one distribution given."""
        return self._given()[0]


@dataclass
class SchedulerSpec:
    """ASHA settings on the per-epoch metric; `type: none` switches early stopping off."""

    __pydantic_config__ = FIELD_RULES

    type: Literal["asha", "none"] = "asha"
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[Float, Field(gt=1)] = 2.0


@dataclass
class ResourceSpec:
    """`resources:` of each trial: CPUs and GPUs (a fraction <= 1 shares a GPU)."""

    __pydantic_config__ = FIELD_RULES

    cpu: PositiveFloat = 1.0
    gpu: Annotated[NonNegativeFloat, AfterValidator(_whole_or_fraction)] = 0.0


@dataclass
class SpecFile:
    """The keys of a sweep-spec file as written, with their defaults; see load_sweep_spec."""

    __pydantic_config__ = FIELD_RULES

    base_config: NonEmptyText  # the training config, relative to the spec that names it
    name: Annotated[Text, AfterValidator(_plain_name)] | None = None  # None: the file's stem
    description: Text | None = None
    experiment: NonEmptyText | None = None  # MLflow experiment; None: the base config's
    overrides: dict[Text, Any] | None = None  # dotted training-config keys
    metric: SweepMetric = "SumR"
    mode: Literal["max", "min"] = "max"
    num_samples: PositiveInt | None = None  # search mode; None: 8
    max_concurrent_trials: PositiveInt = 2
    seed: NonNegativeInt = 0
    resources: ResourceSpec | None = None
    max_failures: NonNegativeInt = 2
    reuse_actors: Bool = True  # run the next trial in a finished trial's worker (no new process)
    storage_path: NonEmptyText | None = None
    scheduler: SchedulerSpec | None = None  # search mode; None: ASHA with its defaults
    space: Annotated[dict[Text, DistributionSpec], Field(min_length=1)] | None = None
    rows: Annotated[dict[Text, dict[Text, Any] | None], Field(min_length=1)] | None = None
    seeds: Seeds | None = None  # grid mode


@dataclass
class SweepSpec:
    """A validated sweep spec; `base` is the resolved base training config with overrides applied."""

    name: str
    path: Path
    base_config: Path
    base: ExperimentConfig
    overrides: dict[str, Any]
    metric: str
    mode: str
    num_samples: int
    max_concurrent_trials: int
    seed: int
    cpus_per_trial: float
    gpus_per_trial: float
    max_failures: int
    reuse_actors: bool  # run the next trial in a finished trial's worker (no new process)
    storage_path: str | None
    experiment: str | None
    scheduler: SchedulerSpec
    space: dict[str, Distribution]
    rows: dict[str, dict[str, Any]]
    seeds: list[int]

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


def _failure(path: Path, problems: list[tuple[str, str]]) -> SweepSpecError:
    """One line `{path}: {key}: {problem}` per problem, each listed once."""
    return SweepSpecError(str(InvalidFields(dict.fromkeys(problems), prefix=f"{path}: ")))


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


def _under(prefix: str, err: ConfigError) -> list[tuple[str, str]]:
    """A config error's problems as spec problems, their keys under `prefix`."""
    if not err.problems:
        return [(prefix, str(err))]
    return [(f"{prefix}.{key}", problem) for key, problem in err.problems]


def _load_base(base_config: Path, overrides: dict[str, Any]
               ) -> tuple[ExperimentConfig | None, list[tuple[str, str]]]:
    """(the base training config with the overrides, problems); None when it cannot be built."""
    if not base_config.is_file():
        return None, [("base_config", f"file {base_config} does not exist "
                                      "(paths are relative to the spec that names them)")]
    try:
        cfg = load_config(base_config)
    except ConfigError as err:
        return None, [("base_config", line) for line in str(err).splitlines()]
    try:
        cfg = apply_overrides(cfg, overrides)
    except ConfigError as err:
        return None, _under("overrides", err)
    if not cfg.tracking.enabled:
        return cfg, [("overrides.tracking.enabled", "sweeps need MLflow tracking switched on")]
    return cfg, []


def _mode_problems(raw: SpecFile) -> list[tuple[str, str]]:
    """Search mode takes `space` (no seeds); grid mode `rows` + `seeds` (no samples, scheduler)."""
    if (raw.space is None) == (raw.rows is None):
        return [("space/rows", "give exactly one: `space` (search) or `rows` + `seeds` (grid)")]
    if raw.space is not None:
        if raw.seeds is None:
            return []
        return [("seeds", "only grid mode (`rows`) takes seeds; search with train.seed")]
    problems = [(key, "grid mode runs every row x seed once, without a scheduler")
                for key in ("num_samples", "scheduler") if getattr(raw, key) is not None]
    if raw.seeds is None:
        problems.append(("seeds", "grid mode needs a list of seeds"))
    for name, overrides in raw.rows.items():
        if SEED_KEY in (overrides or {}):
            problems.append((f"rows.{name}.{SEED_KEY}", "seeds come from `seeds:`, not from a row"))
    return problems


def _space_problems(space: dict[str, Distribution], base: ExperimentConfig
                    ) -> list[tuple[str, str]]:
    """What the base config says of each value a search could draw."""
    problems = []
    for key, distribution in space.items():
        for value in distribution.values_to_check():
            try:
                apply_overrides(base, {key: value})
            except ConfigError as err:
                problems += _under("space", err)
    return problems


def _row_problems(rows: dict[str, dict[str, Any]], base: ExperimentConfig
                  ) -> list[tuple[str, str]]:
    """What the base config says of each grid row's overrides."""
    problems = []
    for name, overrides in rows.items():
        try:
            apply_overrides(base, overrides)
        except ConfigError as err:
            problems += _under(f"rows.{name}", err)
    return problems


def _read_spec(path: Path, spec_items: dict[str, Any]) -> SpecFile:
    """The spec file (over its `base:` chain) with the CLI's spec settings, checked by type."""
    try:
        data = read_yaml(path, relative_keys=("base_config",))
    except ConfigError as err:
        raise SweepSpecError(str(err)) from None
    for key, value in spec_items.items():
        _set_dotted(data, key, value)
    try:
        return validate_as(SpecFile, data)
    except InvalidFields as err:
        raise _failure(path, err.problems) from None


def load_sweep_spec(path: str | os.PathLike, overrides: list[str] | None = None) -> SweepSpec:
    """Read and validate a sweep spec; `overrides` are CLI `key=value` items (see split_overrides).

    Raises SweepSpecError before anything runs: first every key of the wrong type, out of range
    or unknown; once those are right, every problem of the mode, the base config, its overrides,
    the search space and the rows. One line per problem names the file, the key and the problem.
    """
    path = Path(path).resolve()
    spec_items, config_items = split_overrides(list(overrides or []), path)
    raw = _read_spec(path, spec_items)
    space = {key: entry.distribution() for key, entry in (raw.space or {}).items()}
    rows = {name: dict(values or {}) for name, values in (raw.rows or {}).items()}
    config_overrides = {**(raw.overrides or {}), **config_items}
    base_config = Path(raw.base_config).resolve()  # a CLI base_config=... is from the cwd
    base, problems = _load_base(base_config, config_overrides)
    problems = _mode_problems(raw) + problems
    if base is not None:
        problems += _space_problems(space, base) + _row_problems(rows, base)
    if problems:
        raise _failure(path, problems)
    resources = raw.resources or ResourceSpec()
    grid_scheduler = SchedulerSpec(type="none")
    return SweepSpec(
        name=raw.name or path.stem, path=path, base_config=base_config, base=base,
        overrides=config_overrides, metric=raw.metric, mode=raw.mode,
        num_samples=raw.num_samples or 8, max_concurrent_trials=raw.max_concurrent_trials,
        seed=raw.seed, cpus_per_trial=resources.cpu, gpus_per_trial=resources.gpu,
        max_failures=raw.max_failures, reuse_actors=raw.reuse_actors,
        storage_path=raw.storage_path, experiment=raw.experiment,
        scheduler=grid_scheduler if rows else raw.scheduler or SchedulerSpec(),
        space=space, rows=rows, seeds=list(raw.seeds or []))


def trial_overrides(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """The dotted config overrides of one trial from its Tune params (a row name in grid mode)."""
    if spec.is_grid:
        return {**spec.rows[params[ROW_KEY]], SEED_KEY: params[SEED_KEY]}
    return {key: params[key] for key in spec.space}


def trial_config(spec: SweepSpec, params: dict[str, Any]) -> ExperimentConfig:
    """The training config of one trial: the base config with the trial's overrides applied."""
    return apply_overrides(spec.base, trial_overrides(spec, params), source=f"{spec.path} trial")
