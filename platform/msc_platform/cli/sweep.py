"""`msc sweep SPEC [key=value ...]`: run a Ray Tune sweep and print its best trial.

Exit codes: 0 the sweep ran to the end (failed trials are listed, not fatal); 1 no trial
finished; 2 a bad spec, override or cluster address (an address where no Ray cluster answers
fails within seconds, before anything is written); 3 interrupted, or its local Ray died under
it (continue with --resume).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from data_tools.atomic import atomic_write_json
from msc_platform.cli.common import add_run_arguments
from msc_platform.cluster.address import check_address
from msc_platform.cluster.local import ClusterError, running_local_cluster
from msc_platform.run.config import ConfigError
from msc_platform.sweeps.spec import SweepSpecError, load_sweep_spec
from msc_platform.ui_links import experiment_runs_url, run_url, ui_address

if TYPE_CHECKING:
    from msc_platform.sweeps.runner import SweepOutcome

EXIT_NO_TRIAL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 3


def register(subparsers) -> None:
    """Add `msc sweep` to the `msc` command."""
    parser = subparsers.add_parser(
        "sweep", help="run a Ray Tune sweep (search space or ablation grid) from a YAML spec",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, "sweep", "experiments/sweeps/default.yaml", "num_samples=4")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="also write the outcome as JSON to this file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the spec, run the sweep, print the summary; returns the exit code."""
    try:
        spec = load_sweep_spec(args.spec, args.overrides)
        address = args.address or os.environ.get("RAY_ADDRESS")
        if address:
            check_address(address)
        warn_local_store(spec.base.tracking.uri, address)
        # Ray, Tune and torch take seconds to import: only now that spec and address are good.
        from msc_platform.sweeps.runner import run_sweep
        outcome = run_sweep(spec, address=args.address, resume=args.resume,
                            storage=args.storage, verbose=0 if args.quiet else 1)
    except (SweepSpecError, ConfigError, ConnectionError, ClusterError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print_summary(outcome, spec.base.tracking.uri)
    if args.json_path:
        write_outcome(outcome, Path(args.json_path))
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return 0 if outcome.best_config else EXIT_NO_TRIAL


def warn_local_store(configured_uri: str | None, address: str | None) -> None:
    """On a cluster, say so when MLflow points at a local SQLite file other machines cannot reach.

    Silent for the local cluster of `make cluster-up`: its nodes share this machine's files.
    Raises ClusterError when the local cluster record is unreadable.
    """
    uri = configured_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    if address and uri.startswith("sqlite:") and not running_local_cluster(address):
        print(f"note: MLflow store {uri} is a local file; trials on other machines need a tracking "
              "server (MLFLOW_TRACKING_URI=http://host:5000)", file=sys.stderr)


def write_outcome(outcome: SweepOutcome, path: Path) -> None:
    """The outcome as JSON (written atomically)."""
    atomic_write_json(path, dataclasses.asdict(outcome), default=str)


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_summary(outcome: SweepOutcome, configured_uri: str | None) -> None:
    """Print every trial, the best trial's config and scores, and where to look in MLflow."""
    print(f"\nSweep {outcome.name}: {len(outcome.trials)} trials")
    print(f"{'trial':22s} {'status':11s} {'epochs':>6s} {'best':>8s}  config")
    for trial in outcome.trials:
        best = "-" if trial.best is None else f"{trial.best:8.2f}"
        config = " ".join(f"{k}={_format(v)}" for k, v in trial.overrides.items())
        print(f"{trial.trial_id:22s} {trial.status:11s} {trial.epochs:6d} {best:>8s}  {config}")
        if trial.error:
            print(f"{'':22s} error: {trial.error}")
    if outcome.best_config:
        print("\nBest trial config:")
        for key, value in outcome.best_config.items():
            print(f"  {key} = {_format(value)}")
        scores = {k: v for k, v in outcome.best_metrics.items() if k.startswith("best/")}
        print("Best trial scores: " + ", ".join(f"{k[5:]}={v:.2f}" for k, v in sorted(scores.items())))
    else:
        print("\nNo trial finished.")
    store = configured_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    print(f"\nMLflow: experiment '{outcome.experiment}', parent run {outcome.parent_run_id} "
          f"(store: {store}); `make mlflow-ui` to compare the trials")
    if outcome.experiment_id:
        base = ui_address(store)
        print(f"  runs:       {experiment_runs_url(base, outcome.experiment_id)}")
        print(f"  parent run: {run_url(base, outcome.experiment_id, outcome.parent_run_id)}")
    print(f"Ray Tune results: {outcome.storage_dir}")
    if outcome.interrupted:
        print("The sweep was interrupted: continue it with `make sweep RESUME=1` (or --resume).")
