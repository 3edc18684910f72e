"""Every MLflow tag, metric and artifact name the platform writes or reads, in one place.

Runs are found and tabulated by these names (`msc tables`, the sweep driver, resumes), so a
name changes here or nowhere. This module imports nothing.
"""
from __future__ import annotations

# --- tags: MLflow's own
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # on every experiment the platform creates
TRAINING_EXPERIMENT_KIND = "custom_model_development"  # the UI's "Machine learning" kind
DATASET_CONTEXT_TAG = "mlflow.data.context"  # on a dataset input: the split it was used as

# --- tags: what a run is
ROLE_TAG = "msc.role"  # absent on training runs
SWEEP_PARENT_ROLE = "sweep-parent"
EVAL_ROLE = "eval"  # a checkpoint evaluation logged by `msc eval`, not a training run
SWEEP_TAG = "msc.sweep"
ABLATION_TAG = "msc.ablation"
ROW_TAG = "msc.row"
SEED_TAG = "msc.seed"
TRIAL_TAG = "msc.trial_id"
NODE_ID_TAG = "msc.node_id"
NODE_IP_TAG = "msc.node_ip"

# --- tags: how a run ended
ERROR_TAG = "error"
STOP_REASON_TAG = "stop_reason"  # a run that ended FINISHED before its last epoch
NON_FINITE_TAG = "msc.non_finite"  # a trial whose loss or score stopped being finite
BEST_TRIAL_TAG = "best_trial_id"  # on a sweep's parent run
BEST_RUN_TAG = "best_run_id"

# --- tags: what a run ran on
DATASET_TAG = "dataset"
DATASET_FINGERPRINT_TAG = "dataset_fingerprint"
DEVICE_TAG = "device"
INIT_FROM_TAG = "init_from"
INIT_FROM_FORMAT_TAG = "init_from_format"
INIT_FROM_SHA256_TAG = "init_from_sha256"
CHECKPOINT_FORMAT_TAG = "checkpoint_format"
CHECKPOINT_SHA256_TAG = "checkpoint_sha256"
CHECKPOINT_MODEL_TAG = "checkpoint_model"  # `msc eval` of a models:/ URI: "<name>/<version>"

# --- dataset inputs: one per split, named "<collection>/<split>", context = the split
TRAIN_SPLIT = "train"
VAL_SPLIT = "val"

# --- model registry
REGISTERED_MODEL_PREFIX = "msc-"  # + the collection: msc-synthetic, msc-tvr, ...
BEST_MODEL_ALIAS = "best"  # moved by the latest run or sweep that registered a version
REGISTERED_MODEL_TAG = "msc.registered_model"  # on the run that registered: "<name>/<version>"

# --- metrics
LOSS_TOTAL = "loss/total"
VAL_PREFIX = "val/"
DIAG_PREFIX = "diag/"
BEST_PREFIX = "best/"  # the best epoch's scores, logged when a run closes
TRIALS_PREFIX = "trials/"  # trial counts on a sweep's parent run
BEST_EPOCH = "best_epoch"
EPOCH_TIME = "epoch_time_s"
VAL_SUMR = VAL_PREFIX + "SumR"
BEST_SUMR = BEST_PREFIX + "SumR"
SYSTEM_PREFIX = "system/"  # MLflow's system metrics (CPU, memory, disk, network, GPU)

# --- artifacts
CONFIG_ARTIFACT = "config.yaml"
METRICS_ARTIFACT = "metrics.json"
RANKS_ARTIFACT = "ranks.parquet"
CHECKPOINTS_DIR = "checkpoints"
SWEEP_SPEC_DIR = "sweep"
SWEEP_SPACE_ARTIFACT = "sweep/space.yaml"
SWEEP_BASE_CONFIG_ARTIFACT = "sweep/base_config.yaml"
SWEEP_BEST_ARTIFACT = "sweep/best.json"
MODEL_WEIGHTS_FILE = "data/model.pth"  # in a logged model's folder (pytorch flavour, pickle)
MODEL_CONFIG_FILE = "extra_files/config.yaml"  # ... and the run's resolved config beside it
