"""The data of one run: synthetic generation on first use, validation, width check, loaders."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.datasets import make_loaders
from data_tools.synth import ensure_synthetic
from data_tools.validate import Report
from msc_platform.run.config import ConfigError, ExperimentConfig


@dataclass
class TrainingData:
    """Loaders of one collection and what validation found about it."""

    train: Any  # DataLoader of training batches (B videos with all their captions)
    val_videos: Any  # DataLoader of validation videos
    val_queries: Any  # DataLoader of validation queries
    report: Report

    @property
    def fingerprint(self) -> str:
        return self.report.fingerprint


def check_widths(cfg: ExperimentConfig, report: Report, where: str) -> None:
    """Raise ConfigError when model.text_dim / model.video_dim differ from the data's widths."""
    for name, found in (("video_dim", report.video_dim), ("text_dim", report.text_dim)):
        wanted = getattr(cfg.model, name)
        if wanted != found:
            raise ConfigError(f"model.{name}: config says {wanted}, but the features in "
                              f"{where} are {found}-d")


def prepare_data(cfg: ExperimentConfig) -> TrainingData:
    """Generate (synthetic only, first use), validate, cache and load `{data.root}/{data.collection}`.

    Raises DataValidationError for bad data and ConfigError when the feature widths do not
    match the model config, before any training starts.
    """
    root, collection = Path(cfg.data.root), cfg.data.collection
    if cfg.data.synthetic_preset:
        ensure_synthetic(root, preset=cfg.data.synthetic_preset, seed=cfg.data.synthetic_seed,
                         collection=collection)
    loaders = make_loaders(root, collection, clip_tokens=cfg.model.clip_tokens,
                           batch_size=cfg.train.batch_size, num_workers=cfg.data.num_workers,
                           seed=cfg.train.seed, cache_dir=cfg.data.cache_dir,
                           eval_batch_size=cfg.train.eval_video_batch)
    report = loaders.source.report
    check_widths(cfg, report, str(root / collection))
    return TrainingData(loaders.train, loaders.videos, loaders.queries, report)
