"""Model weights from either checkpoint format: detection, loading, shape checks, export.

Two checkpoint formats are read (and, with `load_logged_model`, an MLflow model folder that
msc_platform.run.registry logged: format "mlflow"):
- "msc": this project's `last.pt` / `best.pt` (msc_platform.run.checkpoint): keys `model` (the
  state dict) and `config` (the nested config with its `model:` section), `epoch`, `history`.
- "authors": the released code's `best.ckpt`: keys `state_dict` (the released module names),
  `config` (its flat settings dict), `model_val` ([R@1, R@5, R@10, R@100, SumR]), `epoch`,
  `optimizer`. model.interop converts it.

`export_authors_checkpoint` writes a project checkpoint in the released format, so the released
code's `main.py --eval --resume best.ckpt` can load a model trained here.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pytorch
import torch
from mlflow.models import Model

from model.config import MSCConfig
from model.interop import (
    RELEASED_SCHEDULES,
    CheckpointFormatError,
    authors_config,
    load_authors_checkpoint,
    to_authors_state_dict,
)
from model.network import MSC
from msc_platform.names import MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE
from msc_platform.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from msc_platform.run.config import ExperimentConfig, from_dict, read_yaml

MSC_FORMAT, AUTHORS_FORMAT, MLFLOW_FORMAT = "msc", "authors", "mlflow"
AUTHORS_KEYS = ("state_dict", "config", "model_val")
MSC_KEYS = ("model", "config")
RECALL_KEYS = ("R1", "R5", "R10", "R100", "SumR")  # model_val order, MLflow spelling


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint file, with what the file says about it."""

    format: str  # MSC_FORMAT | AUTHORS_FORMAT | MLFLOW_FORMAT
    model: MSC  # weights loaded, on the CPU
    model_config: MSCConfig
    stored_config: ExperimentConfig | None  # the full config of a project checkpoint
    epoch: int | None
    sha256: str


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _PickledSchedule:
    """Stands in for the released optimiser's schedule objects, which its `best.ckpt` pickles
    in the optimizer state, so the file's keys can be read with weights_only=True."""


_RELEASED_GLOBALS = [(_PickledSchedule, f"Opts.optimization.{name}") for name in RELEASED_SCHEDULES]


def _read_any(path: Path) -> dict[str, Any]:
    """The checkpoint dict: a plain-data load first (enough for a released file), else the
    project's reader (its RNG states need the full unpickler). Raises CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(_RELEASED_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not plain data: a project checkpoint, or not a checkpoint at all
        return load_checkpoint(path, required=())
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(state).__name__}")
    return state


def detect_format(state: dict[str, Any], path: str | os.PathLike) -> str:
    """MSC_FORMAT or AUTHORS_FORMAT from the keys of a checkpoint dict.

    Raises CheckpointError naming the file and the keys it has when it is neither.
    """
    config = state.get("config")
    if all(key in state for key in MSC_KEYS) and isinstance(config, dict) \
            and isinstance(config.get("model"), dict):
        return MSC_FORMAT
    if all(key in state for key in AUTHORS_KEYS) and isinstance(config, dict):
        return AUTHORS_FORMAT
    raise CheckpointError(
        f"{path}: not a model checkpoint: expected keys {list(MSC_KEYS)} with config sections "
        f"(this project's last.pt/best.pt) or {list(AUTHORS_KEYS)} (the released best.ckpt), "
        f"found {sorted(map(str, state))}")


def _load_authors(path: Path, state: dict[str, Any], sha256: str) -> LoadedModel:
    try:
        model, model_config = load_authors_checkpoint(path)
    except (CheckpointFormatError, OSError) as err:
        message = str(err)
        raise CheckpointError(message if str(path) in message else f"{path}: {message}") from err
    epoch = state.get("epoch")
    return LoadedModel(AUTHORS_FORMAT, model.eval(), model_config, None,
                       None if epoch is None else int(epoch), sha256)


def _load_msc(path: Path, state: dict[str, Any], sha256: str) -> LoadedModel:
    cfg = from_dict(state["config"], str(path))
    model = MSC(cfg.model)
    check_state_dict(model.state_dict(), state["model"], path)
    model.load_state_dict(state["model"])
    epoch = state.get("epoch")
    return LoadedModel(MSC_FORMAT, model.eval(), cfg.model, cfg,
                       None if epoch is None else int(epoch), sha256)


def load_model_checkpoint(path: str | os.PathLike) -> LoadedModel:
    """Rebuild the model stored in a checkpoint of either format (weights on the CPU).

    The model's config comes from the file. Building the model does not touch the caller's
    torch RNG. Raises CheckpointError naming the file (missing, unreadable, neither format,
    missing or mismatched weights) and ConfigError for a bad stored config.
    """
    path = Path(path)
    state = _read_any(path)
    return _rebuild(path, state, detect_format(state, path))


def _rebuild(path: Path, state: dict[str, Any], kind: str) -> LoadedModel:
    """The model of a checkpoint dict of format `kind`, built without touching the torch RNG."""
    sha256 = file_sha256(path)
    with torch.random.fork_rng(devices=[]):
        if kind == AUTHORS_FORMAT:
            return _load_authors(path, state, sha256)
        return _load_msc(path, state, sha256)


def load_logged_model(folder: str | os.PathLike, source: str) -> LoadedModel:
    """Rebuild the model of an MLflow model folder logged by msc_platform.run.registry (the
    pickled MSC module under data/, the run's config in extra_files/config.yaml), on the CPU.

    The network is built anew from the config and given the stored module's weights, so a
    module pickled by older code still loads when its weights fit. `source` (the models:/ URI)
    names the model in errors. Raises CheckpointError (no config, weights that cannot be
    unpickled or do not fit) and ConfigError for a bad stored config.
    """
    folder = Path(folder)
    config_path, weights = folder / MODEL_CONFIG_FILE, folder / MODEL_WEIGHTS_FILE
    if not config_path.is_file() or not weights.is_file():
        raise CheckpointError(f"{source}: not an MSC model: it lacks {MODEL_CONFIG_FILE} or "
                              f"{MODEL_WEIGHTS_FILE}")
    cfg = from_dict(read_yaml(config_path), f"{source} {MODEL_CONFIG_FILE}")
    try:
        stored = mlflow.pytorch.load_model(str(folder), map_location="cpu")
    except Exception as err:  # unpickling runs arbitrary code: any error means "cannot load"
        raise CheckpointError(f"{source}: cannot load {MODEL_WEIGHTS_FILE}: "
                              f"{type(err).__name__}: {err}") from err
    if not isinstance(stored, torch.nn.Module):
        raise CheckpointError(f"{source}: {MODEL_WEIGHTS_FILE} holds a "
                              f"{type(stored).__name__}, not a torch module")
    with torch.random.fork_rng(devices=[]):
        model = MSC(cfg.model)
    check_state_dict(model.state_dict(), stored.state_dict(), source)
    model.load_state_dict(stored.state_dict())
    epoch = (Model.load(str(folder)).metadata or {}).get("epoch")
    return LoadedModel(MLFLOW_FORMAT, model.eval(), cfg.model, cfg,
                       None if epoch is None else int(epoch), file_sha256(weights))


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor],
                     path: str | os.PathLike) -> None:
    """Raise CheckpointError naming the file and the first key that is missing, unexpected or
    of another shape (with both shapes) in `found` compared with `expected`."""
    missing = [key for key in expected if key not in found]
    if missing:
        raise CheckpointError(f"{path}: weights lack key {missing[0]!r} "
                              f"({len(missing)} missing in all)")
    unexpected = [key for key in found if key not in expected]
    if unexpected:
        raise CheckpointError(f"{path}: unexpected weight key {unexpected[0]!r} "
                              f"({len(unexpected)} unexpected in all)")
    for key, tensor in expected.items():
        if tuple(found[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path}: weight {key!r} has shape {tuple(found[key].shape)}, "
                                  f"the model needs {tuple(tensor.shape)}")


def load_initial_model(model: MSC, path: str | os.PathLike) -> LoadedModel:
    """The checkpoint (either format) whose weights start a fine-tuning run of `model`
    (train.init_from), checked to fit: load `loaded.model.state_dict()` into `model`.

    Raises CheckpointError naming the file and the key when the stored network does not have
    `model`'s shapes (compared in the released names for a released checkpoint), and what
    load_model_checkpoint raises.
    """
    loaded = load_model_checkpoint(path)
    if loaded.format == AUTHORS_FORMAT:
        check_state_dict(to_authors_state_dict(model), to_authors_state_dict(loaded.model), path)
    check_state_dict(model.state_dict(), loaded.model.state_dict(), path)
    return loaded


def _model_val(state: dict[str, Any]) -> list[float]:
    """[R@1, R@5, R@10, R@100, SumR] of the stored weights: the last history row (the epoch
    that wrote the file); zeros, as the released code starts, when there is no history."""
    history = state.get("history") or []
    row = history[-1] if history else {}
    return [float(row.get(f"val/{key}", 0.0)) for key in RECALL_KEYS]


def _released_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """Released `config` keys outside the network: data and training settings."""
    train = cfg.train
    return {"collection": cfg.data.collection, "dataset_name": cfg.data.collection,
            "seed": train.seed, "batchsize": train.batch_size, "n_epoch": train.epochs,
            "max_es_cnt": train.patience, "lr": train.lr, "wd": train.weight_decay,
            "lr_warmup_proportion": train.warmup}


def export_authors_checkpoint(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the project checkpoint at `path` in the released format at `out` (atomically).

    The file holds {config, epoch, model_val, state_dict, optimizer}: the released config dict
    (model.interop.authors_config plus the data and training settings), the epoch,
    the stored weights' val [R@1, R@5, R@10, R@100, SumR], the weights under the released
    names, and an empty optimizer state: the released `--eval --resume` never reads it (its
    training resume needs the optimiser state and cannot continue from this file).
    Raises CheckpointError / ConfigError for a bad input.
    """
    path = Path(path)
    state = _read_any(path)
    if detect_format(state, path) != MSC_FORMAT:
        raise CheckpointError(f"{path}: export needs this project's checkpoint (last.pt/best.pt)")
    loaded = _rebuild(path, state, MSC_FORMAT)
    cfg = loaded.stored_config
    config = authors_config(cfg.model, **_released_settings(cfg))
    exported = {"config": config, "epoch": loaded.epoch or 0, "model_val": _model_val(state),
                "state_dict": to_authors_state_dict(loaded.model), "optimizer": {}}
    return save_checkpoint(exported, out)
