"""Build small, real MLflow stores for the table/plot tests: a sweep parent and its trial runs,
logged through the MLflow client exactly as the MLflow record in docs/training.md says."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from msc_platform.run.tracking import get_or_create_experiment

RECALLS = ("R@1", "R@5", "R@10", "R@100", "SumR")
_TEMPLATE: list[Path] = []  # one migrated, empty SQLite store per test process


def new_store(directory: Path) -> MlflowClient:
    """A client on a fresh SQLite store in `directory`, copied from an empty migrated store
    (creating a store runs MLflow's schema migrations, which take seconds)."""
    if not _TEMPLATE:
        folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
        atexit.register(shutil.rmtree, folder, True)
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
        _TEMPLATE.append(folder / "mlflow.db")
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE[0], directory / "mlflow.db")
    return MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")


def mlflow_name(name: str) -> str:
    """A metric name MLflow accepts ('@' is refused): best/R@1 -> best/R1."""
    return name.replace("@", "")


def start_parent(client: MlflowClient, experiment: str, sweep: str) -> tuple[str, str]:
    """Create the experiment (artifacts beside the SQLite file) and the sweep's parent run;
    returns (experiment_id, parent_run_id)."""
    experiment_id = get_or_create_experiment(client, experiment, client.tracking_uri)
    parent = client.create_run(experiment_id, run_name=sweep,
                               tags={"msc.role": "sweep-parent", "msc.sweep": sweep})
    client.set_terminated(parent.info.run_id, "FINISHED")
    return experiment_id, parent.info.run_id


def log_trial(client: MlflowClient, experiment_id: str, parent_run_id: str, *, params: dict,
              best: dict[str, float] | None = None, row: str | None = None, seed: int | None = None,
              ranks: pd.DataFrame | None = None, history: dict[str, list[float]] | None = None,
              status: str = "FINISHED", trial_id: str | None = None, extra_tags: dict | None = None) -> str:
    """One trial run: params, optional per-epoch history, best/ metrics, ranks.parquet, status."""
    tags = {"mlflow.parentRunId": parent_run_id, "msc.sweep": "grid", **(extra_tags or {})}
    if row is not None:
        tags.update({"msc.ablation": "grid", "msc.row": row, "msc.seed": str(seed)})
    if trial_id is not None:
        tags["msc.trial_id"] = trial_id
    run_id = client.create_run(experiment_id, run_name=trial_id or f"{row}-s{seed}", tags=tags).info.run_id
    metrics = [Metric(mlflow_name(key), value, 0, step)
               for key, values in (history or {}).items() for step, value in enumerate(values)]
    metrics += [Metric(mlflow_name(f"best/{key}"), value, 0, 0) for key, value in (best or {}).items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(key, str(value)) for key, value in params.items()])
    if ranks is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ranks.parquet"
            ranks.to_parquet(path, index=False)
            client.log_artifact(run_id, str(path))
    if status == "FAILED":
        client.set_tag(run_id, "error", "non-finite loss at epoch 1")
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def ranks_frame(cap_ids: list[str], fused: list[int]) -> pd.DataFrame:
    """A ranks.parquet table with the given fused ranks (clip/frame copy them)."""
    return pd.DataFrame({"cap_id": cap_ids, "video_id": [f"v{i % 3}" for i in range(len(cap_ids))],
                         "rank_fused": fused, "rank_clip": fused, "rank_frame": fused})


def recalls_from_ranks(fused: list[int]) -> dict[str, float]:
    """R@K and SumR in percent, counted by hand."""
    out = {f"R@{k}": 100.0 * sum(rank <= k for rank in fused) / len(fused) for k in (1, 5, 10, 100)}
    out["SumR"] = sum(out.values())
    return out
