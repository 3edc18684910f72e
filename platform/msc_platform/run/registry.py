"""The MLflow model registry: a run's best checkpoint as a registered model, and back.

`register_best_model` logs the weights of a project checkpoint (`best.pt`) as an MLflow model of
the run (pytorch flavour, pickle format: the MSC module, with the run's resolved config as the
extra file `config.yaml`), registers it as a new version of `msc-<collection>` and points the
alias `best` at that version: the latest training run or sweep that registered holds `best`.
Only the weights are stored (no optimiser state). Everything goes through the run's
`MlflowClient`: no global tracking URI is set or read, and the pip requirements are given, not
inferred (inference loads the model in a subprocess and takes seconds).

`download_model` resolves `models:/<name>@<alias>`, `models:/<name>/<version>` or
`models:/<model id>` in the registry of a tracking URI and downloads the model's folder;
`msc_platform.run.model_checkpoints.load_logged_model` reads it.
"""
from __future__ import annotations

import logging
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow.artifacts
import mlflow.pytorch
import torch
from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from msc_platform.names import (
    BEST_MODEL_ALIAS,
    CONFIG_ARTIFACT,
    REGISTERED_MODEL_PREFIX,
    REGISTERED_MODEL_TAG,
)
from msc_platform.run.checkpoint import CheckpointError
from msc_platform.run.config import to_yaml
from msc_platform.run.model_checkpoints import MSC_FORMAT, LoadedModel, load_model_checkpoint
from msc_platform.run.tracking import quiet

MODEL_URI_PREFIX = "models:/"
MODEL_TYPE = "msc"
# what loading the pickled module needs besides this project's `model` package (and mlflow,
# which MLflow always adds)
PIP_REQUIREMENTS = (f"torch=={torch.__version__.split('+')[0]}",)
_VERSION = re.compile(r"\d+")
_LOGGED_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")


@dataclass(frozen=True)
class ModelRecord:
    """One registered version of a run's best model."""

    name: str  # the registered model, msc-<collection>
    version: str
    model_id: str  # the MLflow LoggedModel holding the files
    run_id: str

    @property
    def uri(self) -> str:
        return f"{MODEL_URI_PREFIX}{self.name}/{self.version}"


def registered_name(collection: str) -> str:
    """The registered model of a collection: `msc-<collection>`."""
    return f"{REGISTERED_MODEL_PREFIX}{collection}"


def is_model_uri(text: str | object) -> bool:
    """Whether `text` is an MLflow `models:/...` URI (not a file path)."""
    return isinstance(text, str) and text.startswith(MODEL_URI_PREFIX)


def log_model(client: MlflowClient, run_id: str, loaded: LoadedModel, name: str) -> LoggedModel:
    """Log `loaded` (a project checkpoint) as an MLflow model of run `run_id`, in the run's
    experiment: the pickled MSC module under data/, the resolved config as extra file
    `config.yaml`, metadata epoch and checkpoint_sha256. The model ends READY, or FAILED when
    a step raised (what MLflow raised is re-raised)."""
    run = client.get_run(run_id)
    logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                        model_type=MODEL_TYPE)
    try:
        client.log_outputs(run_id, models=[LoggedModelOutput(logged.model_id,
                                                             step=max(loaded.epoch or 0, 0))])
        with tempfile.TemporaryDirectory() as folder:
            config = Path(folder) / CONFIG_ARTIFACT
            config.write_text(to_yaml(loaded.stored_config))
            description = Model(artifact_path=logged.artifact_location, run_id=run_id,
                                model_uuid=logged.model_id, model_id=logged.model_id,
                                metadata={"epoch": loaded.epoch,
                                          "checkpoint_sha256": loaded.sha256})
            local = Path(folder) / "model"
            # MLflow warns about the pickle format, chosen so that the MSC module loads back
            with quiet("mlflow.pytorch", logging.ERROR):
                mlflow.pytorch.save_model(loaded.model, str(local), mlflow_model=description,
                                          serialization_format="pickle",
                                          pip_requirements=list(PIP_REQUIREMENTS),
                                          extra_files=[str(config)])
            client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    return client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)


def registry_available(client: MlflowClient) -> bool:
    """Whether the client's store has a model registry that answers."""
    try:
        client.search_registered_models(max_results=1)
    except MlflowException:
        return False
    return True


def register(client: MlflowClient, name: str, logged: LoggedModel, run_id: str,
             alias: str = BEST_MODEL_ALIAS) -> ModelRecord:
    """A new version of registered model `name` (created when missing) from `logged`, with
    `alias` moved to it. Raises what MLflow raises (other than the model existing already)."""
    try:
        client.create_registered_model(name, description="MSC best checkpoints; alias "
                                       f"'{BEST_MODEL_ALIAS}' = the latest registered")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=logged.artifact_location, run_id=run_id,
                                          model_id=logged.model_id)
    client.set_registered_model_alias(name, alias, version.version)
    return ModelRecord(name, str(version.version), logged.model_id, run_id)


def register_best_model(client: MlflowClient, run_id: str,
                        checkpoint: str | Path) -> ModelRecord | None:
    """Log the project checkpoint `checkpoint` (a run's best.pt) as a model of run `run_id` and
    register it as `msc-<collection>` with alias `best`; the run gets tag msc.registered_model
    = `<name>/<version>`. Returns None, with a note on stderr, when the store has no model
    registry (the model stays logged on the run).

    Raises CheckpointError for a file that is not this project's checkpoint, and what MLflow
    raises when the store cannot be written.
    """
    loaded = load_model_checkpoint(checkpoint)
    if loaded.format != MSC_FORMAT:
        raise CheckpointError(f"{checkpoint}: only this project's checkpoints are registered")
    name = registered_name(loaded.stored_config.data.collection)
    logged = log_model(client, run_id, loaded, name)
    if not registry_available(client):
        print(f"note: model {logged.model_id} of run {run_id} is not registered as {name}: "
              f"the store at {client.tracking_uri} has no model registry", file=sys.stderr)
        return None
    record = register(client, name, logged, run_id)
    client.set_tag(run_id, REGISTERED_MODEL_TAG, f"{record.name}/{record.version}")
    return record


def _source_of(client: MlflowClient, uri: str) -> tuple[str, str]:
    """(download location, what it is: `<name>/<version>` or the model id) of a models:/ URI.

    Raises CheckpointError naming the URI for a malformed URI, and MlflowException for an
    unknown model, version or alias.
    """
    rest = uri[len(MODEL_URI_PREFIX):].strip("/")
    if _LOGGED_MODEL_ID.fullmatch(rest):
        return client.get_logged_model(rest).artifact_location, rest
    name, at, alias = rest.partition("@")
    if at:
        malformed = not name or not alias or "/" in alias
    else:
        name, _, version = rest.partition("/")
        malformed = not name or not _VERSION.fullmatch(version)
    if malformed:
        raise CheckpointError(f"{uri}: expected models:/<name>@<alias>, "
                              "models:/<name>/<version> or models:/<model id>")
    if at:
        version = client.get_model_version_by_alias(name, alias).version
    return client.get_model_version_download_uri(name, str(version)), f"{name}/{version}"


def download_model(uri: str, tracking_uri: str, dst: str | Path) -> tuple[Path, str]:
    """Download the model of `uri` from the registry at `tracking_uri` into folder `dst`;
    returns (its local folder, `<name>/<version>` or the model id).

    Raises CheckpointError naming the URI and the tracking URI for a malformed URI, an unknown
    model, version or alias, and a download that fails.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        location, what = _source_of(client, uri)
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dst),
                                                    tracking_uri=tracking_uri)
    except MlflowException as err:
        raise CheckpointError(f"{uri}: not found in the registry at {tracking_uri}: "
                              f"{err.message}") from err
    return Path(local), what
