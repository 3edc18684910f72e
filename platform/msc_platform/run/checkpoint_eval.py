"""`msc eval`: evaluate a checkpoint of either format, or a registered model, on a dataset and
record it in MLflow.

The checkpoint is a file (this project's last.pt/best.pt or the released best.ckpt) or a
`models:/<name>@<alias>` (`/<version>`, `/<model id>`) URI of a model that a run registered
(msc_platform.run.registry), downloaded to a temporary folder from the registry at the
tracking URI of `--config` / the overrides (else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).
The model (its weights and its MSCConfig) always comes from the checkpoint. The data, training
(evaluation chunking, device) and tracking settings come from `--config` when given; otherwise a
project checkpoint or a registered model uses the config stored in it (logging to experiment
EVAL_EXPERIMENT) and a released checkpoint uses the default synthetic config. Overrides apply
last.

The MLflow run holds the flattened config as params, the metrics under the training run's
names (`val/R1` ... `val/frame/SumR`, `diag/...`) at step = the checkpoint's epoch,
`config.yaml` and `ranks.parquet`, the val split as a dataset input, and the tags
`msc.role=eval` (the tables leave such runs out), `checkpoint`, `checkpoint_format`
(msc | authors | mlflow), `checkpoint_sha256`, `checkpoint_model` (`<name>/<version>` of a
registered model), `dataset`, `dataset_fingerprint`, `device`, git state and package versions.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from msc_platform.names import (
    CHECKPOINT_FORMAT_TAG,
    CHECKPOINT_MODEL_TAG,
    CHECKPOINT_SHA256_TAG,
    CONFIG_ARTIFACT,
    DATASET_FINGERPRINT_TAG,
    DATASET_TAG,
    DEVICE_TAG,
    EVAL_ROLE,
    RANKS_ARTIFACT,
    ROLE_TAG,
    VAL_SPLIT,
)
from msc_platform.run.config import (
    DEFAULT_CONFIG,
    ConfigError,
    ExperimentConfig,
    TrackingConfig,
    apply_overrides,
    flatten,
    load_config,
    parse_overrides,
    resolve_data_root,
    to_yaml,
)
from msc_platform.run.data import TrainingData, prepare_data
from msc_platform.run.evaluate import evaluate, logged_metrics
from msc_platform.run.model_checkpoints import (
    AUTHORS_FORMAT,
    LoadedModel,
    load_logged_model,
    load_model_checkpoint,
)
from msc_platform.run.registry import download_model, is_model_uri
from msc_platform.run.runtime import apply_threads, keep_freed_memory, pick_device
from msc_platform.run.tracking import (
    RunTracker,
    collection_inputs,
    git_state,
    package_versions,
    tracking_uri,
)

EVAL_EXPERIMENT = "msc-eval"
RELEASED_WIDTH_KEYS = "visual_feat_dim (model.video_dim) and q_feat_size (model.text_dim)"


@dataclass
class CheckpointEvaluation:
    """The outcome of evaluate_checkpoint."""

    checkpoint: Path | str  # a file, or the models:/ URI as given
    format: str  # "msc" | "authors" | "mlflow"
    sha256: str
    epoch: int | None
    config: ExperimentConfig  # the resolved config the evaluation ran with
    metrics: dict[str, float]  # evaluate's keys: R@1 ... SumR, clip/..., frame/..., diag
    ranks: pd.DataFrame
    run_id: str | None  # None when tracking.enabled is false
    model_version: str | None = None  # "<name>/<version>" (or the model id) of a models:/ URI


def eval_config(loaded: LoadedModel, config_path: str | os.PathLike | None,
                overrides: list[str] | None, data_root: str | None) -> ExperimentConfig:
    """The config to evaluate `loaded` with: data/train/tracking from `config_path` (else the
    checkpoint's stored config, else DEFAULT_CONFIG), the model from the checkpoint, then the
    overrides and the data root (`data_root` > $MSC_DATA_ROOT > config). Raises ConfigError."""
    if config_path is None and loaded.stored_config is not None:
        base = dataclasses.replace(loaded.stored_config,
                                   tracking=TrackingConfig(experiment=EVAL_EXPERIMENT))
        source = "checkpoint config (overrides)"
    else:
        path = Path(config_path or DEFAULT_CONFIG)
        base, source = load_config(path, data_root=data_root), f"{path} (overrides)"
    cfg = apply_overrides(dataclasses.replace(base, model=loaded.model_config), overrides or [],
                          source=source)
    cfg.data.root = str(resolve_data_root(cfg, data_root))
    return cfg


def _data_for(loaded: LoadedModel, cfg: ExperimentConfig, path: Path | str) -> TrainingData:
    """prepare_data, with a width mismatch reported against the checkpoint. Raises ConfigError
    / DataValidationError."""
    try:
        return prepare_data(cfg)
    except ConfigError as err:
        released = loaded.format == AUTHORS_FORMAT
        keys = f" (its config keys {RELEASED_WIDTH_KEYS})" if released else ""
        raise ConfigError(f"{path}: the checkpoint's model does not fit the data{keys}: {err}; "
                          f"pass --config for data of the checkpoint's widths") from err


def _eval_tags(result: CheckpointEvaluation, data: TrainingData, device: torch.device) -> dict:
    tags = {**git_state(), **package_versions(), ROLE_TAG: EVAL_ROLE,
            "checkpoint": str(result.checkpoint), CHECKPOINT_FORMAT_TAG: result.format,
            CHECKPOINT_SHA256_TAG: result.sha256, DATASET_TAG: result.config.data.collection,
            DATASET_FINGERPRINT_TAG: data.fingerprint, DEVICE_TAG: str(device)}
    if result.model_version:
        tags[CHECKPOINT_MODEL_TAG] = result.model_version
    return tags


def _run_name(checkpoint: Path | str) -> str:
    """`eval best.pt` for a file, `eval models:/msc-synthetic@best` for a registered model."""
    return f"eval {checkpoint if is_model_uri(checkpoint) else Path(checkpoint).name}"


def registry_uri(config_path: str | os.PathLike | None, overrides: list[str] | None) -> str:
    """The tracking URI whose registry resolves a models:/ checkpoint: `tracking.uri` of the
    overrides, else of `config_path`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.
    Raises ConfigError for a bad config file or override."""
    for key, value, text in reversed(parse_overrides(list(overrides or []))):
        if key == "tracking.uri":
            return tracking_uri(None if value is None else text)
    configured = load_config(config_path).tracking.uri if config_path is not None else None
    return tracking_uri(configured)


def load_for_eval(checkpoint: str | os.PathLike, config_path: str | os.PathLike | None,
                  overrides: list[str] | None) -> tuple[LoadedModel, str | None]:
    """The model of a checkpoint file, or of a models:/ URI (downloaded to a temporary folder
    that is gone on return); returns (model, `<name>/<version>` of a registered model or None).

    Raises CheckpointError naming the file or URI (missing, unreadable, unknown model or
    alias), ConfigError for a bad stored config, config file or override.
    """
    if not is_model_uri(checkpoint):
        return load_model_checkpoint(checkpoint), None
    uri = registry_uri(config_path, overrides)
    with tempfile.TemporaryDirectory(prefix="msc-model-") as folder:
        local, version = download_model(str(checkpoint), uri, folder)
        return load_logged_model(local, str(checkpoint)), version


def log_evaluation(result: CheckpointEvaluation, data: TrainingData, device: torch.device) -> str:
    """Record `result` as one FINISHED MLflow run (see the module doc); returns its id.

    A failure while logging ends the run FAILED and re-raises what MLflow raised.
    """
    cfg = result.config
    tracker = RunTracker.open(tracking_uri(cfg.tracking.uri), cfg.tracking.experiment,
                              run_name=cfg.tracking.run_name or _run_name(result.checkpoint))
    try:
        tracker.set_tags(_eval_tags(result, data, device))
        data_folder = Path(cfg.data.root) / cfg.data.collection
        tracker.log_datasets(collection_inputs(cfg.data.collection, data_folder, data.report,
                                               (VAL_SPLIT,)))
        tracker.log_params(flatten(cfg))
        tracker.log_text(to_yaml(cfg), CONFIG_ARTIFACT)
        tracker.log_metrics(logged_metrics(result.metrics), step=max(result.epoch or 0, 0))
        with tempfile.TemporaryDirectory() as folder:
            ranks = Path(folder) / RANKS_ARTIFACT
            result.ranks.to_parquet(ranks, index=False)
            tracker.log_artifact(ranks)
    except BaseException as err:
        tracker.finish("FAILED", error=f"{type(err).__name__}: {err}")
        raise
    tracker.finish("FINISHED")
    return tracker.run_id


def evaluate_checkpoint(path: str | os.PathLike, *, config_path: str | os.PathLike | None = None,
                        overrides: list[str] | None = None, data_root: str | None = None,
                        device: str | None = None) -> CheckpointEvaluation:
    """Evaluate the checkpoint at `path` (this project's last.pt/best.pt, a released
    best.ckpt, or a models:/ URI of a registered model) on the validation split of the
    configured data, and log it to MLflow unless tracking.enabled is false.

    Raises CheckpointError for a bad or foreign file or an unknown model URI, ConfigError for
    a bad config or a model whose widths do not fit the data (naming the file), and
    DataValidationError for bad data.
    """
    path = path if is_model_uri(path) else Path(path)
    loaded, version = load_for_eval(path, config_path, overrides)
    cfg = eval_config(loaded, config_path, overrides, data_root)
    target = pick_device(device or cfg.train.device)
    apply_threads(cfg.train.num_threads)
    keep_freed_memory()
    data = _data_for(loaded, cfg, path)
    evaluation = evaluate(loaded.model.to(target), data, cfg, device=target)
    result = CheckpointEvaluation(path, loaded.format, loaded.sha256, loaded.epoch, cfg,
                                  evaluation["metrics"], evaluation["ranks"], None, version)
    if cfg.tracking.enabled:
        result.run_id = log_evaluation(result, data, target)
    return result
