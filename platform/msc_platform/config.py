"""Experiment configuration: YAML files into typed dataclasses, plus dotted overrides.

A config file has the sections `data:`, `model:` (fields of `model.config.MSCConfig`),
`train:` and `tracking:`, and may name a `base:` file (relative to itself) whose values it
overrides. Overrides are `section.key=value` strings (`train.lr=1e-4`, `model.tcp=false`).
Unknown keys, values of the wrong type and out-of-range values raise `ConfigError` naming the
file, the dotted key and the problem, before any work starts.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from model.config import MSCConfig

DATA_ROOT_ENV = "MSC_DATA_ROOT"
DEFAULT_CONFIG = Path("experiments") / "configs" / "synthetic.yaml"  # from the working directory
SECTIONS = ("data", "model", "train", "tracking")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the source, key and problem."""


@dataclass
class DataConfig:
    """Where the features live and how they are loaded."""

    root: str = "data"  # relative to the working directory; see resolve_data_root
    collection: str = "synthetic"
    synthetic_preset: str | None = None  # "tiny" | "small": generate the collection on first use
    synthetic_seed: int = 0
    cache_dir: str | None = None  # feature cache; None: {root}/.cache
    num_workers: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the field for out-of-range values."""
        if not self.collection:
            raise ValueError("collection: must not be empty")
        if self.synthetic_preset not in (None, "tiny", "small"):
            raise ValueError(f"synthetic_preset: expected 'tiny', 'small' or null, got {self.synthetic_preset!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers: must be >= 0, got {self.num_workers}")


@dataclass
class TrainConfig:
    """Optimisation, schedule, stopping rule and evaluation chunking."""

    batch_size: int = 128  # videos per batch, each with all its captions
    epochs: int = 100
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: float = 0.01  # fraction of all steps
    patience: int = 10  # stop once more than this many epochs in a row bring no better val SumR
    seed: int = 9527
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:N"
    bf16: bool = False  # bf16 autocast of forward and losses (CUDA, and CPUs with bf16 matmuls)
    compile: bool = False  # torch.compile the forward and the losses (see compile_backend)
    compile_backend: str = "inductor"  # torch.compile backend: inductor, aot_eager, eager, ...
    log_every: int = 50  # steps between host reads: progress-bar loss and the non-finite check
    num_threads: int = 0  # torch CPU threads for the process; 0 keeps torch's default
    deterministic: bool = False  # torch.use_deterministic_algorithms
    eval_query_chunk: int = 256  # queries scored against all videos at a time
    eval_video_batch: int = 128  # videos encoded at a time during evaluation
    progress: bool = True  # tqdm progress bar
    init_from: str | None = None  # checkpoint (this project's or a released best.ckpt) whose
    # weights start the run; optimiser, schedule and epochs start fresh

    def validate(self) -> None:
        """Raise ValueError naming the field for out-of-range values."""
        if self.num_threads < 0:
            raise ValueError(f"num_threads: must be >= 0, got {self.num_threads}")
        positive = ("batch_size", "epochs", "eval_query_chunk", "eval_video_batch", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"patience: must be >= 0, got {self.patience}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: must be a finite number > 0, got {self.lr}")
        if not 0 <= self.weight_decay < 1:
            raise ValueError(f"weight_decay: must be in [0, 1), got {self.weight_decay}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup: must be in [0, 1), got {self.warmup}")
        if not self.compile_backend:
            raise ValueError("compile_backend: must not be empty")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


@dataclass
class TrackingConfig:
    """MLflow settings."""

    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "msc"
    run_name: str | None = None
    log_checkpoint: bool = True  # upload best.pt as an artifact at the end

    def validate(self) -> None:
        """Raise ValueError naming the field for out-of-range values."""
        if not self.experiment:
            raise ValueError("experiment: must not be empty")


@dataclass
class ExperimentConfig:
    """One training run: data, model (MSCConfig), training and tracking settings."""

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


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` checked (and widened int->float, list->tuple) against type `tp`.

    Raises ConfigError("key: expected T, got V") on a mismatch.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if tp in (tuple, list):
        origin = tp
    if origin in (tuple, list):
        if isinstance(value, str):
            try:
                value = _parse_scalar(value)
            except yaml.YAMLError:
                raise ConfigError(f"{key}: expected a list, got {value!r}") from None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_type = args[0] if args else Any
        items = [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is type(None):
        if value is None:
            return None
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _section_classes() -> dict[str, type]:
    return {"data": DataConfig, "model": MSCConfig, "train": TrainConfig, "tracking": TrackingConfig}


def _set_value(cfg: ExperimentConfig, key: str, value: Any, raw_text: str | None = None) -> None:
    """Set the dotted `key` (section.field) on `cfg` after a type check; raises ConfigError."""
    section, _, name = key.partition(".")
    classes = _section_classes()
    if section not in classes or not name:
        raise ConfigError(f"{key}: unknown key (expected '<section>.<field>' with section one of {list(SECTIONS)})")
    types_by_name = _field_types(classes[section])
    if name not in types_by_name:
        raise ConfigError(f"{key}: unknown key (known in '{section}': {sorted(types_by_name)})")
    tp = types_by_name[name]
    if raw_text is not None and _accepts_str(tp) and isinstance(value, (int, float, bool)):
        value = raw_text
    setattr(getattr(cfg, section), name, _coerce(value, tp, key))


def _accepts_str(tp: Any) -> bool:
    return tp is str or str in typing.get_args(tp)


def validate(cfg: ExperimentConfig) -> None:
    """Run every section's range checks; raises ConfigError('section.field: problem')."""
    for section in SECTIONS:
        try:
            getattr(cfg, section).validate()
        except ValueError as err:
            message = str(err).removeprefix(f"{type(getattr(cfg, section)).__name__}.")
            raise ConfigError(f"{section}.{message}") from err


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file, merged over its `base:` chain; raises ConfigError."""
    if path in seen:
        raise ConfigError(f"{path}: base: circular reference through {[str(p) for p in seen]}")
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror or err}") from err
    try:
        data = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with sections {list(SECTIONS)}, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file name, got {base!r}")
    parent = _read_yaml((path.parent / base).resolve(), seen + (path,))
    return _deep_merge(parent, data)


def _deep_merge(lower: dict, upper: dict) -> dict:
    merged = dict(lower)
    for key, value in upper.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def from_dict(data: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """Build and validate an ExperimentConfig from nested sections; raises ConfigError."""
    cfg = ExperimentConfig()
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: {section}: unknown section (expected {list(SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section}: expected a mapping, got {values!r}")
        for name, value in values.items():
            _with_source(source, _set_value, cfg, f"{section}.{name}", value)
    _with_source(source, validate, cfg)
    return cfg


def _with_source(source: str, fn, *args) -> Any:
    """Call fn(*args), prefixing any ConfigError with `source`."""
    try:
        return fn(*args)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


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
    """Return a copy of `cfg` with dotted overrides applied and validated.

    `overrides` is a dict {"model.sim_thr": 0.7} (values typed, e.g. from Ray Tune) or a list of
    "key=value" strings. Raises ConfigError naming `source`, the key and the problem.
    """
    updated = dataclasses.replace(
        cfg, **{s: dataclasses.replace(getattr(cfg, s)) for s in SECTIONS})
    if isinstance(overrides, dict):
        items = [(key, value, None) for key, value in overrides.items()]
    else:
        items = _with_source(source, parse_overrides, list(overrides))
    for key, value, text in items:
        _with_source(source, _set_value, updated, key, value, text)
    _with_source(source, validate, updated)
    return updated


def resolve_data_root(cfg: ExperimentConfig, cli_root: str | None = None) -> Path:
    """The data root: `cli_root` > $MSC_DATA_ROOT > cfg.data.root, made absolute from the cwd."""
    root = cli_root or os.environ.get(DATA_ROOT_ENV) or cfg.data.root
    return Path(root).expanduser().resolve()


def load_config(path: str | os.PathLike, overrides: list[str] | None = None, *,
                data_root: str | None = None) -> ExperimentConfig:
    """Load a YAML config, apply `key=value` overrides, resolve the data root; validate.

    The data root and train.init_from become absolute (see resolve_data_root), so the config
    stays valid when a worker runs in another directory. Raises ConfigError naming the file,
    key and problem.
    """
    path = Path(path)
    cfg = from_dict(_read_yaml(path), str(path))
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
