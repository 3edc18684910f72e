"""One MSC training run end to end: data, model, epochs, evaluation, checkpoints, MLflow.

Epochs are 0-based: epoch e is the (e+1)-th pass over the training videos; hard negatives are on
for epochs e >= model.hard_negative_start; MLflow metrics use step = e. `out_dir` holds
`last.pt` (written every epoch, for resume), `best.pt` (best val SumR so far) and `ranks.parquet`
(per-query ranks of the best evaluation).

How a run ends in MLflow (with close_run=True, the default: `msc train`; a sweep trial passes
close_run=False and its driver decides, see msc_platform.sweeps.trial_runs):
- FINISHED: all epochs ran, early stopping triggered, or `on_epoch` raised StopTraining
  (the caller asked for a graceful stop); best metrics and artifacts are logged.
- FAILED (re-raised): any Exception, a non-finite loss (NonFiniteLossError) included; the
  message is in tag `error`.
- KILLED (re-raised): SystemExit or KeyboardInterrupt, e.g. Ray Tune stopping a trial from
  inside `tune.report`; tag `error` says what stopped it.

Besides params, metrics, tags and artifacts the run records its data as two dataset inputs
(`<collection>/train`, `<collection>/val`), MLflow's system metrics while it trains
(tracking.system_metrics), and, when it closes FINISHED, its best.pt as a registered model
`msc-<collection>@best` (tracking.register_model; msc_platform.run.registry).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from data_tools.atomic import atomic_copy, atomic_write
from model.losses import msc_loss
from model.network import MSC
from model.optim import build_optimizer, warmup_linear_schedule
from msc_platform.names import (
    CHECKPOINTS_DIR,
    CONFIG_ARTIFACT,
    DATASET_FINGERPRINT_TAG,
    DATASET_TAG,
    DEVICE_TAG,
    INIT_FROM_FORMAT_TAG,
    INIT_FROM_SHA256_TAG,
    INIT_FROM_TAG,
    LOSS_TOTAL,
    METRICS_ARTIFACT,
    RANKS_ARTIFACT,
    STOP_REASON_TAG,
    TRAIN_SPLIT,
    VAL_SPLIT,
)
from msc_platform.run.checkpoint import load_checkpoint, save_checkpoint
from msc_platform.run.config import ConfigError, ExperimentConfig, flatten, to_dict, to_yaml
from msc_platform.run.data import TrainingData, prepare_data
from msc_platform.run.evaluate import autocast, evaluate, logged_metrics, metric_name
from msc_platform.run.model_checkpoints import load_initial_model
from msc_platform.run.registry import register_best_model
from msc_platform.run.runtime import (
    apply_threads,
    capture_rng_state,
    keep_freed_memory,
    pick_device,
    restore_rng_state,
    seed_everything,
    to_device,
)
from msc_platform.run.tracking import (
    NullTracker,
    RunTracker,
    collection_inputs,
    git_state,
    package_versions,
    system_metrics,
    tracking_uri,
)

LAST, BEST, RANKS = "last.pt", "best.pt", RANKS_ARTIFACT  # the files of a run folder
BEST_KEYS = ("R@1", "R@5", "R@10", "R@100", "SumR", "clip/SumR", "frame/SumR",
             "diffnorm_text", "diffnorm_video", "spearman")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message gives epoch, step and terms."""


class StopTraining(Exception):
    """Raised by an `on_epoch` callback to end the run early and gracefully (FINISHED)."""


@dataclass
class EpochReport:
    """What `on_epoch` receives after each epoch's evaluation and checkpoint."""

    epoch: int  # 0-based
    metrics: dict[str, float]  # the epoch's MLflow metrics plus "SumR" (= val/SumR)
    checkpoint_dir: Path  # out_dir, holding last.pt / best.pt / ranks.parquet
    checkpoint_path: Path  # last.pt
    run_id: str | None
    is_best: bool
    final: bool = False  # the trainer stops after this epoch (its last, or early stopping)


@dataclass
class TrainResult:
    """The outcome of train()."""

    best_sumr: float
    best_epoch: int  # 0-based; -1 when no epoch ran
    metrics: dict[str, float]  # best/... metrics and best_epoch, as logged at the end
    run_id: str | None
    checkpoint_path: Path | None  # best.pt


@dataclass
class _State:
    """Everything a checkpoint restores besides the model and optimiser."""

    epoch: int = -1  # last finished epoch
    best_sumr: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)



def forward_loss(model: MSC, batch: dict[str, torch.Tensor],
                  hard_negatives: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Encode the batch and compute every loss term: (total, terms)."""
    return msc_loss(model.cfg, model(batch), batch, model, hard_negatives=hard_negatives)


class _LossWindow:
    """Loss terms summed on the device over an epoch, and a non-finite flag over the steps since
    the last host read, so that the loop reads the host once per window, not once per step."""

    def __init__(self, epoch: int, device: torch.device):
        self.epoch, self.device = epoch, device
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = self.first = 0
        self.window_total = torch.zeros((), device=device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        """Add one step's detached terms (device tensors; no host read)."""
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.window_total = self.window_total + terms["total"]
        self.nonfinite = self.nonfinite | ~torch.isfinite(terms["total"])
        self.steps += 1

    def close(self) -> float | None:
        """Read the window back (one host read): its mean total loss, None when it is empty.

        Raises NonFiniteLossError naming the epoch and the window's steps when the total loss
        was NaN or infinite at any of them.
        """
        count = self.steps - self.first
        if count == 0:
            return None
        flag, total = torch.stack([self.nonfinite.float(), self.window_total]).tolist()
        if flag:
            raise NonFiniteLossError(f"non-finite loss at epoch {self.epoch} in steps "
                                     f"{self.first}-{self.steps - 1} (window mean {total / count})")
        self.first = self.steps
        self.window_total = torch.zeros((), device=self.device)
        return total / count

    def epoch_means(self) -> dict[str, float]:
        """The epoch's mean terms as MLflow metrics: loss/<term> and segments."""
        totals = torch.stack(list(self.sums.values())).tolist() if self.sums else []
        means = {key: value / max(self.steps, 1)
                 for key, value in zip(self.sums, totals, strict=True)}
        row = {f"loss/{key}": value for key, value in means.items() if key != "segments"}
        row["segments"] = means.get("segments", 0.0)
        return row


class Trainer:
    """The moving parts of one run; `train()` drives it."""

    def __init__(self, cfg: ExperimentConfig, data: TrainingData, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        self.model = MSC(cfg.model).to(device)
        self.optimizer = build_optimizer(self.model, cfg.train.lr, cfg.train.weight_decay)
        self.steps_per_epoch = len(data.train)
        total_steps = cfg.train.epochs * self.steps_per_epoch
        self.scheduler = warmup_linear_schedule(self.optimizer, total_steps, cfg.train.warmup)
        self.state = _State()
        self.forward_loss = forward_loss
        if cfg.train.compile:
            self.forward_loss = torch.compile(forward_loss, backend=cfg.train.compile_backend)

    def load(self, checkpoint: dict) -> None:
        """Restore model, optimiser, schedule, counters and RNG states from a checkpoint."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.state = _State(checkpoint["epoch"], checkpoint["best_sumr"], checkpoint["best_epoch"],
                            checkpoint["bad_epochs"], checkpoint.get("best_metrics", {}),
                            checkpoint["history"])
        restore_rng_state(checkpoint["rng"])

    def checkpoint(self, run_id: str | None) -> dict:
        """The full training state as a checkpoint dict (see msc_platform.run.checkpoint)."""
        s = self.state
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": s.epoch,
                "best_sumr": s.best_sumr, "best_epoch": s.best_epoch, "bad_epochs": s.bad_epochs,
                "best_metrics": s.best_metrics, "history": s.history,
                "config": to_dict(self.cfg), "rng": capture_rng_state(), "run_id": run_id}

    def train_step(self, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        """One optimiser update on `batch`; returns the detached loss terms (on the device).

        Reads nothing back to the host: the caller checks the loss for NaN/inf (see
        _LossWindow). Non-finite values are not caught here.
        """
        batch = to_device(batch, self.device)
        tensors = {key: value for key, value in batch.items() if torch.is_tensor(value)}
        with autocast(self.device, self.cfg.train.bf16):
            total, terms = self.forward_loss(self.model, tensors,
                                             epoch >= self.cfg.model.hard_negative_start)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {key: value.detach().float() for key, value in terms.items()}

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training loader; returns mean loss terms, lr, time and throughput.

        The host reads the loss once every train.log_every steps and at the end of the epoch
        (progress bar and non-finite check). Raises NonFiniteLossError, naming the window of
        steps, when the total loss was NaN or infinite at any step of it.
        """
        self.model.train()
        sampler = getattr(self.data.train, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # the shuffle depends on (seed, epoch) only: resumable
        window = _LossWindow(epoch, self.device)
        videos, start = 0, time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        bar = tqdm(self.data.train, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True,
                   disable=not self.cfg.train.progress)
        for step, batch in enumerate(bar):
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            window.add(self.train_step(batch, epoch))
            videos += len(batch["video_ids"])
            if (step + 1) % self.cfg.train.log_every == 0:
                self._report(window, bar, videos / max(time.perf_counter() - start, 1e-9))
        self._report(window, bar, 0.0)
        seconds = time.perf_counter() - start
        row = window.epoch_means()
        row.update({"lr": lr, "train_time_s": seconds, "throughput_videos_s": videos / seconds})
        return row

    def _report(self, window: "_LossWindow", bar, rate: float) -> None:
        """Close the loss window (one host read; raises NonFiniteLossError) and show its loss."""
        loss = window.close()
        if self.cfg.train.progress and loss is not None:
            bar.set_postfix(loss=f"{loss:.4f}", videos_s=f"{rate:.1f}")

    def evaluate(self) -> dict:
        """Evaluation on the validation split (see msc_platform.run.evaluate)."""
        return evaluate(self.model, self.data, self.cfg, device=self.device)


def _epoch_metrics(train_row: dict, evaluation: dict, seconds: float) -> dict[str, float]:
    """One epoch's MLflow metrics: losses, segments, val/..., diag/..., lr, times."""
    row = {**train_row, **logged_metrics(evaluation["metrics"])}
    row["epoch_time_s"] = seconds
    return row


def _best_metrics(evaluation: dict, epoch: int) -> dict[str, float]:
    """The best/... metrics logged at the end of the run, from the best evaluation."""
    metrics = evaluation["metrics"]
    best = {f"best/{metric_name(key)}": metrics[key] for key in BEST_KEYS}
    best["best_epoch"] = float(epoch)
    return best


def _open_tracker(cfg: ExperimentConfig, run_id: str | None, parent_run_id: str | None,
                  tags: dict[str, str] | None) -> RunTracker:
    if not cfg.tracking.enabled:
        return NullTracker()
    return RunTracker.open(tracking_uri(cfg.tracking.uri), cfg.tracking.experiment,
                           run_id=run_id, run_name=cfg.tracking.run_name,
                           parent_run_id=parent_run_id, tags=tags)


def _attach_tracker(cfg: ExperimentConfig, run_id: str | None,
                    tags: dict[str, str] | None) -> RunTracker:
    """The existing run `run_id`, logged into without touching its status (close_run=False).

    Raises ConfigError without a run id, MlflowException when the run does not exist.
    """
    if not cfg.tracking.enabled:
        return NullTracker()
    if run_id is None:
        raise ConfigError("train(close_run=False) needs the run_id of an existing MLflow run")
    tracker = RunTracker.attach(tracking_uri(cfg.tracking.uri), run_id)
    tracker.set_tags(tags or {})
    return tracker


def _resume_checkpoint(cfg: ExperimentConfig, out_dir: Path, resume: bool,
                       run_id: str | None) -> dict | None:
    """The checkpoint to resume from (None for a fresh start); checks it matches `cfg`.

    Raises ConfigError when the model section differs from the checkpoint's, or when `run_id`
    names another MLflow run than the checkpoint's.
    """
    path = out_dir / LAST
    if not resume or not path.is_file():
        return None
    checkpoint = load_checkpoint(path)
    if checkpoint["config"]["model"] != to_dict(cfg)["model"]:
        raise ConfigError(f"{path}: cannot resume: the model config differs from the checkpoint's")
    if run_id and checkpoint["run_id"] and run_id != checkpoint["run_id"]:
        raise ConfigError(f"{path}: cannot resume: checkpoint belongs to MLflow run "
                          f"{checkpoint['run_id']}, not {run_id}")
    return checkpoint


def _run_tags(cfg: ExperimentConfig, data: TrainingData, device: torch.device) -> dict[str, str]:
    return {**git_state(), **package_versions(), DATASET_TAG: cfg.data.collection,
            DATASET_FINGERPRINT_TAG: data.fingerprint, DEVICE_TAG: str(device)}


def _log_datasets(tracker: RunTracker, cfg: ExperimentConfig, data: TrainingData) -> None:
    """The run's dataset inputs: `<collection>/train` and `<collection>/val` (MLflow adds none
    twice, so a resumed run keeps one of each while the data is unchanged)."""
    folder = Path(cfg.data.root) / cfg.data.collection
    tracker.log_datasets(collection_inputs(cfg.data.collection, folder, data.report,
                                           (TRAIN_SPLIT, VAL_SPLIT)))


def _start_from(model: MSC, path: str) -> dict[str, str]:
    """Load the weights of checkpoint `path` (either format) into `model` (train.init_from);
    returns the run's init_from tags. Raises CheckpointError naming the file and the key when
    the shapes do not fit."""
    loaded = load_initial_model(model, path)
    model.load_state_dict(loaded.model.state_dict())
    return {INIT_FROM_TAG: path, INIT_FROM_FORMAT_TAG: loaded.format,
            INIT_FROM_SHA256_TAG: loaded.sha256}


def _relog_missing_epochs(tracker: RunTracker, history: list[dict]) -> None:
    """Log history rows whose epoch the run lacks (a crash between checkpoint and logging)."""
    logged = tracker.logged_steps(LOSS_TOTAL)
    for epoch, row in enumerate(history):
        if epoch not in logged:
            tracker.log_metrics(row, step=epoch)


def _run_epochs(trainer: Trainer, tracker: RunTracker, out_dir: Path,
                on_epoch: Callable[[EpochReport], Any] | None) -> None:
    """Train from the epoch after trainer.state.epoch until the last epoch or early stopping.

    Early stopping follows the released code: the run ends once the count of consecutive
    epochs without a new best val SumR exceeds train.patience (with patience 10, the 11th such
    epoch is the last one trained).
    """
    cfg, state = trainer.cfg, trainer.state
    for epoch in range(state.epoch + 1, cfg.train.epochs):
        if state.bad_epochs > cfg.train.patience:
            break
        start = time.perf_counter()
        train_row = trainer.train_epoch(epoch)
        evaluation = trainer.evaluate()
        row = _epoch_metrics(train_row, evaluation, time.perf_counter() - start)
        sumr = evaluation["metrics"]["SumR"]
        is_best = sumr > state.best_sumr
        if is_best:
            state.best_sumr, state.best_epoch, state.bad_epochs = sumr, epoch, 0
            state.best_metrics = _best_metrics(evaluation, epoch)
            atomic_write(out_dir / RANKS, partial(evaluation["ranks"].to_parquet, index=False))
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        state.history.append(row)
        last = save_checkpoint(trainer.checkpoint(tracker.run_id), out_dir / LAST)
        if is_best:
            atomic_copy(last, out_dir / BEST)
        tracker.log_metrics(row, step=epoch)
        if on_epoch is not None:
            final = epoch + 1 == cfg.train.epochs or state.bad_epochs > cfg.train.patience
            on_epoch(EpochReport(epoch, {**row, "SumR": sumr}, out_dir, last, tracker.run_id,
                                 is_best, final))


def log_run_record(tracker: RunTracker, best_metrics: dict[str, float], last_epoch: int,
                   history: list[dict], folder: Path, log_checkpoint: bool) -> None:
    """Log a run's closing record from a trainer folder (out_dir or a copy of it).

    The record: the best/... scores (at step last_epoch), metrics.json (best, epochs run,
    history), folder/ranks.parquet and, with log_checkpoint, folder/best.pt under checkpoints/.
    train() logs it at the end of a run; the sweep driver logs it from a trial's last Tune
    checkpoint when the trial's worker was stopped before it could. Logging it twice overwrites
    the artifacts. Raises what MLflow raises when the store cannot be written.
    """
    if best_metrics:
        tracker.log_metrics(best_metrics, step=max(last_epoch, 0))
    tracker.log_json({"best": best_metrics, "epochs_run": last_epoch + 1, "history": history},
                     METRICS_ARTIFACT)
    if (folder / RANKS).is_file():
        tracker.log_artifact(folder / RANKS)
    if log_checkpoint and (folder / BEST).is_file():
        tracker.log_artifact(folder / BEST, CHECKPOINTS_DIR)


def _result(trainer: Trainer, tracker: RunTracker, out_dir: Path) -> TrainResult:
    state = trainer.state
    best_path = out_dir / BEST if (out_dir / BEST).is_file() else None
    return TrainResult(state.best_sumr, state.best_epoch, dict(state.best_metrics),
                       tracker.run_id, best_path)


def _close_finished(trainer: Trainer, tracker: RunTracker, out_dir: Path) -> None:
    """Log the run record (best metrics, artifacts), register best.pt (tracking.register_model)
    and end the run FINISHED."""
    state, cfg = trainer.state, trainer.cfg
    log_run_record(tracker, state.best_metrics, state.epoch, state.history, out_dir,
                   cfg.tracking.log_checkpoint)
    if cfg.tracking.register_model and tracker.run_id and (out_dir / BEST).is_file():
        register_best_model(tracker.client, tracker.run_id, out_dir / BEST)
    tracker.finish("FINISHED")


def _prepare(cfg: ExperimentConfig, tracker: RunTracker, checkpoint: dict | None) -> Trainer:
    """Process settings, data, run tags/params/config, and the trainer (resumed or initialised)."""
    device = pick_device(cfg.train.device)
    apply_threads(cfg.train.num_threads)
    keep_freed_memory()
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    data = prepare_data(cfg)
    tracker.set_tags(_run_tags(cfg, data, device))
    _log_datasets(tracker, cfg, data)
    if not tracker.has_params():
        tracker.log_params(flatten(cfg))
    tracker.log_text(to_yaml(cfg), CONFIG_ARTIFACT)
    trainer = Trainer(cfg, data, device)
    if checkpoint is not None:
        trainer.load(checkpoint)
        _relog_missing_epochs(tracker, trainer.state.history)
    elif cfg.train.init_from:
        tracker.set_tags(_start_from(trainer.model, cfg.train.init_from))
    return trainer


def train(cfg: ExperimentConfig, out_dir: str | os.PathLike, *, resume: bool = False,
          on_epoch: Callable[[EpochReport], Any] | None = None, run_id: str | None = None,
          parent_run_id: str | None = None, tags: dict[str, str] | None = None,
          close_run: bool = True) -> TrainResult:
    """Train MSC with `cfg`, evaluating after every epoch; returns the best result.

    resume: continue from out_dir/last.pt when it exists (its MLflow run included), else start
    fresh. run_id: an existing MLflow run to log into. parent_run_id: make the run a child run.
    tags: extra MLflow tags. on_epoch(EpochReport) runs after each epoch's checkpoint; it may
    raise StopTraining to end the run gracefully. cfg.train.init_from: a checkpoint of either
    format whose weights start a fresh run (ignored when resuming from last.pt); tags init_from,
    init_from_format, init_from_sha256.
    close_run: end the MLflow run here (FINISHED with its record and registered model, FAILED or
    KILLED, as the module docstring says). False when the caller owns the run's status (a sweep trial, whose
    run the sweep driver opens and closes): `run_id` must name an existing run, which is only
    logged into, never reopened, closed or given its closing record.
    System metrics (tracking.system_metrics) are sampled from the run's start until training
    ends; their thread is stopped before train() returns or raises.
    Raises ConfigError / DataValidationError for bad input before training starts, CheckpointError
    for an init_from checkpoint that is unreadable or does not fit the model,
    NonFiniteLossError when the loss stops being finite (with close_run, the run ends FAILED).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = _resume_checkpoint(cfg, out_dir, resume, run_id)
    run_id = checkpoint["run_id"] if checkpoint and checkpoint["run_id"] else run_id
    tracker = (_open_tracker(cfg, run_id, parent_run_id, tags) if close_run
               else _attach_tracker(cfg, run_id, tags))
    try:
        with system_metrics(tracker, cfg.tracking.system_metrics_interval_s,
                            cfg.tracking.system_metrics):
            trainer = _prepare(cfg, tracker, checkpoint)
            try:
                _run_epochs(trainer, tracker, out_dir, on_epoch)
            except StopTraining as stop:
                if close_run:
                    tracker.set_tags({STOP_REASON_TAG: str(stop) or "StopTraining from on_epoch"})
        if close_run:
            _close_finished(trainer, tracker, out_dir)
        return _result(trainer, tracker, out_dir)
    except Exception as err:
        if close_run:
            tracker.finish("FAILED", error=f"{type(err).__name__}: {err}")
        raise
    except BaseException as err:
        if close_run:
            tracker.finish("KILLED", error=f"stopped by {type(err).__name__}: {err}")
        raise
