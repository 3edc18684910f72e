"""What `make mlflow-ui` prints before it starts the UI: the runs page of every experiment in the
store that holds runs, and the page of its latest sweep's parent run, in the model-training view.

`python -m msc_platform.reports.ui_pages [--port P] [--tracking-uri URI]`.
"""
from __future__ import annotations

import argparse
import os

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from msc_platform.names import ROLE_TAG, SWEEP_PARENT_ROLE
from msc_platform.ui_links import experiment_runs_url, run_url

DEFAULT_URI = "sqlite:///mlflow.db"


def store_pages(tracking_uri: str, ui_base: str) -> list[str]:
    """One line per experiment with runs (`name: runs page`), each followed by its latest sweep
    parent run's page when it has one. Raises what MLflow raises for an unreadable store."""
    client = MlflowClient(tracking_uri=tracking_uri)
    lines = []
    for experiment in client.search_experiments(view_type=ViewType.ACTIVE_ONLY):
        if not client.search_runs([experiment.experiment_id], max_results=1):
            continue
        lines.append(f"{experiment.name}: {experiment_runs_url(ui_base, experiment.experiment_id)}")
        sweeps = client.search_runs([experiment.experiment_id], max_results=1,
                                    filter_string=f"tags.`{ROLE_TAG}` = '{SWEEP_PARENT_ROLE}'",
                                    order_by=["attributes.start_time DESC"])
        if sweeps:
            sweep = sweeps[0]
            lines.append(f"  latest sweep '{sweep.info.run_name}': "
                         f"{run_url(ui_base, experiment.experiment_id, sweep.info.run_id)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the pages of the store at --tracking-uri (default $MLFLOW_TRACKING_URI)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000, help="the UI's port on 127.0.0.1")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI))
    args = parser.parse_args(argv)
    base = f"http://127.0.0.1:{args.port}"
    print(f"MLflow UI at {base} on {args.tracking_uri} (model-training pages):")
    for line in store_pages(args.tracking_uri, base) or ["(no runs yet: run `make sweep`)"]:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
