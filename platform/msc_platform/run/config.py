"""Experiment configuration: YAML files into typed dataclasses, plus dotted overrides.

A config file has the sections `data:`, `model:` (fields of `model.config.MSCConfig`),
`train:` and `tracking:`, and may name `base:` files (relative to itself) whose values it
overrides. Overrides are `section.key=value` strings (`train.lr=1e-4`, `model.tcp=false`).
Each field's type says what it accepts; pydantic checks them (`model.validation`), and unknown
keys, values of the wrong type and out-of-range values raise `ConfigError` with one line per bad
field naming the file, the dotted key and the problem, before any work starts.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator

from model.config import MSCConfig
from model.validation import (
    FIELD_RULES,
    Bool,
    Fraction,
    Int,
    InvalidFields,
    NonEmptyText,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Text,
    validate_as,
    without_none,
)

DATA_ROOT_ENV = "MSC_DATA_ROOT"
DEFAULT_CONFIG = Path("experiments") / "configs" / "synthetic.yaml"  # from the working directory
SECTIONS = ("data", "model", "train", "tracking")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the source, key and problem.

    `problems` holds the (dotted key, problem) pairs of a validation failure ([] for a file
    that cannot be read or parsed), for callers that report them under keys of their own.
    """

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])

    @classmethod
    def listing(cls, source: str, problems: list[tuple[str, str]]) -> ConfigError:
        """One line `{source}: {key}: {problem}` per problem."""
        return cls(str(InvalidFields(problems, prefix=f"{source}: ")), problems)


def _device_name(name: str) -> str:
    if not DEVICE_PATTERN.fullmatch(name):
        raise ValueError("expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return name


@dataclass
class DataConfig:
    """Where the features live and how they are loaded."""

    __pydantic_config__ = FIELD_RULES

    root: Text = "data"  # relative to the working directory; see resolve_data_root
    collection: NonEmptyText = "synthetic"
    # "tiny" | "small": generate the collection on first use
    synthetic_preset: Literal["tiny", "small"] | None = None
    synthetic_seed: Int = 0
    cache_dir: Text | None = None  # feature cache; None: {root}/.cache
    num_workers: NonNegativeInt = 0


@dataclass
class TrainConfig:
    """Optimisation, schedule, stopping rule and evaluation chunking."""

    __pydantic_config__ = FIELD_RULES

    batch_size: PositiveInt = 128  # videos per batch, each with all its captions
    epochs: PositiveInt = 100
    lr: PositiveFloat = 3e-4
    weight_decay: Fraction = 0.01
    warmup: Fraction = 0.01  # fraction of all steps
    # stop once more than `patience` epochs in a row bring no better val SumR
    patience: NonNegativeInt = 10
    seed: Int = 9527
    # "auto" (CUDA when available), "cpu", "cuda", "cuda:N"
    device: Annotated[Text, AfterValidator(_device_name)] = "auto"
    bf16: Bool = False  # bf16 autocast of forward and losses (CUDA, and CPUs with bf16 matmuls)
    compile: Bool = False  # torch.compile the forward and the losses (see compile_backend)
    compile_backend: NonEmptyText = "inductor"  # torch.compile backend: inductor, aot_eager, ...
    log_every: PositiveInt = 50  # steps between host reads: progress-bar loss, non-finite check
    num_threads: NonNegativeInt = 0  # torch CPU threads for the process; 0 keeps torch's default
    deterministic: Bool = False  # torch.use_deterministic_algorithms
    eval_query_chunk: PositiveInt = 256  # queries scored against all videos at a time
    eval_video_batch: PositiveInt = 128  # videos encoded at a time during evaluation
    progress: Bool = True  # tqdm progress bar
    # checkpoint (this project's or a released best.ckpt) whose weights start the run;
    # optimiser, schedule and epochs start fresh
    init_from: Text | None = None


@dataclass
class TrackingConfig:
    """MLflow settings."""

    __pydantic_config__ = FIELD_RULES

    enabled: Bool = True
    uri: Text | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: NonEmptyText = "msc"
    run_name: Text | None = None
    log_checkpoint: Bool = True  # upload best.pt as an artifact at the end
    # log best.pt as an MLflow model (pytorch flavour) and register it as msc-<collection>@best
    register_model: Bool = True
    system_metrics: Bool = True  # MLflow system metrics (CPU, memory, disk, network, GPU)
    system_metrics_interval_s: PositiveFloat = 10.0  # seconds between system metric samples


@dataclass
class ExperimentConfig:
    """One training run: data, model (MSCConfig), training and tracking settings."""

    __pydantic_config__ = FIELD_RULES

    data: DataConfig = field(default_factory=DataConfig)
    model: MSCConfig = field(default_factory=MSCConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `3e-4` as a float (YAML 1.2), not as the string '3e-4'."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _parse_scalar(text: str) -> Any:
    """Parse one override value with the config's YAML rules."""
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: Path, relative_keys: tuple[str, ...] = (),
              seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping merged over its `base:` files (each named relative to its own file).

    `base:` is one file name or a list of them, merged left to right, then this file on top
    (mappings merge key by key; any other value replaces). Top-level `relative_keys` hold file
    names relative to the file that sets them; they come back absolute. Raises ConfigError
    naming the file: unreadable, not valid YAML, not a mapping, a base that is not a file name
    (or list of them) or that leads back to itself.
    """
    if path in seen:
        raise ConfigError(f"{path}: base: circular reference through {[str(p) for p in seen]}")
    data = _read_mapping(path)
    for key in relative_keys:
        if isinstance(data.get(key), str) and data[key]:
            data[key] = str((path.parent / data[key]).resolve())
    merged: dict[str, Any] = {}
    for base in _base_names(path, data.pop("base", None)):
        merged = deep_merge(merged, read_yaml((path.parent / base).resolve(), relative_keys,
                                               seen + (path,)))
    return deep_merge(merged, data)


def _read_mapping(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`; raises ConfigError when unreadable, invalid or not a mapping."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from err
    try:
        data = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def _base_names(path: Path, base: Any) -> list[str]:
    """`base:` as a list of file names; raises ConfigError for anything else."""
    if base is None:
        return []
    names = base if isinstance(base, list) else [base]
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ConfigError(f"{path}: base: expected a file name or a list of file names, "
                          f"got {base!r}")
    return names


def deep_merge(lower: dict, upper: dict) -> dict:
    """`upper` over `lower`: mappings merge key by key, any other value replaces."""
    merged = dict(lower)
    for key, value in upper.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def from_dict(data: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """Build and validate an ExperimentConfig from nested sections; raises ConfigError.

    A section given as null keeps its defaults. The error lists every bad field.
    """
    return _validated({name: values for name, values in data.items() if values is not None},
                      source)


def _validated(values: dict[str, Any], source: str,
               problems: list[tuple[str, str]] | None = None) -> ExperimentConfig:
    """`values` as an ExperimentConfig; raises ConfigError listing `problems` and each bad field."""
    problems = list(problems or [])
    try:
        cfg = validate_as(ExperimentConfig, values)
    except InvalidFields as err:
        problems += err.problems
    if problems:
        raise ConfigError.listing(source, problems)
    return cfg


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any, str]]:
    """Split `key=value` strings into (key, parsed value, raw text); raises ConfigError."""
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected 'section.key=value'")
        try:
            value = _parse_scalar(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: cannot parse value: {err}") from err
        parsed.append((key, value, text))
    return parsed


def apply_overrides(cfg: ExperimentConfig, overrides: dict[str, Any] | list[str],
                    source: str = "overrides") -> ExperimentConfig:
    """A new config: `cfg` with dotted overrides applied, validated; `cfg` stays as it is.

    `overrides` is a dict {"model.sim_thr": 0.7} (values typed, e.g. from Ray Tune) or a list of
    "key=value" strings. Raises ConfigError naming `source` and every bad key with its problem.
    """
    if isinstance(overrides, dict):
        items = [(key, value, None) for key, value in overrides.items()]
    else:
        try:
            items = parse_overrides(list(overrides))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    values, problems = to_dict(cfg), []
    for key, value, text in items:
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            problems.append((key, "unknown key (expected '<section>.<field>' with a section of "
                                  f"{', '.join(SECTIONS)})"))
            continue
        values[section][name] = _override_value(section, name, value, text)
    return _validated(values, source, problems)


def _override_value(section: str, name: str, value: Any, text: str | None) -> Any:
    """What an override sets: YAML-read values, except raw text for fields that take text.

    A `key=value` string arrives as (YAML-read value, raw text): a text field keeps the raw
    text where YAML read a number or a bool (`tracking.run_name=123`, `model.cbva=off`).
    A dict value arrives typed; a string for a field that takes no text is read as YAML
    (flatten()'s "[null, 2.0]" for gauss_widths).
    """
    takes_text = _takes_text(section, name)
    if text is not None:
        return text if takes_text and isinstance(value, (bool, int, float)) else value
    if isinstance(value, str) and not takes_text:
        try:
            return _parse_scalar(value)
        except yaml.YAMLError:
            return value  # validation reports it with the field's expected type
    return value


@functools.cache
def _takes_text(section: str, name: str) -> bool:
    """Whether field `name` of `section` holds text: a str, or a choice among strings."""
    section_class = typing.get_type_hints(ExperimentConfig)[section]
    tp = without_none(typing.get_type_hints(section_class).get(name))
    if typing.get_origin(tp) is Literal:
        return all(isinstance(choice, str) for choice in typing.get_args(tp))
    return tp is str


def resolve_data_root(cfg: ExperimentConfig, cli_root: str | None = None) -> Path:
    """The data root: `cli_root` > $MSC_DATA_ROOT > cfg.data.root, made absolute from the cwd."""
    root = cli_root or os.environ.get(DATA_ROOT_ENV) or cfg.data.root
    return Path(root).expanduser().resolve()


def load_config(path: str | os.PathLike, overrides: list[str] | None = None, *,
                data_root: str | None = None) -> ExperimentConfig:
    """Load a YAML config, apply `key=value` overrides, resolve the data root; validate.

    The data root and train.init_from become absolute (see resolve_data_root), so the config
    stays valid when a worker runs in another directory. Raises ConfigError naming the file
    and, one line each, every bad key with its problem.
    """
    path = Path(path)
    cfg = from_dict(read_yaml(path), str(path))
    cfg = apply_overrides(cfg, overrides or [], source=f"{path} (overrides)")
    cfg.data.root = str(resolve_data_root(cfg, data_root))
    if cfg.train.init_from:
        cfg.train.init_from = str(Path(cfg.train.init_from).expanduser().resolve())
    return cfg


def to_dict(cfg: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Nested plain dict of `cfg` (tuples as lists), the inverse of from_dict."""
    return {section: {k: list(v) if isinstance(v, tuple) else v
                      for k, v in dataclasses.asdict(getattr(cfg, section)).items()}
            for section in SECTIONS}


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML text (loadable again with load_config)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(cfg: ExperimentConfig) -> dict[str, Any]:
    """Dotted {"section.field": value} for every field.

    Lists (gauss_widths) become their YAML flow text, which apply_overrides reads back.
    """
    flat = {}
    for section, values in to_dict(cfg).items():
        for name, value in values.items():
            if isinstance(value, list):
                value = yaml.safe_dump(value, default_flow_style=True).strip()
            flat[f"{section}.{name}"] = value
    return flat
