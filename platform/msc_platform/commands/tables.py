"""`msc tables` (tables and plots of an MLflow experiment) and `msc ablation` (run a grid, then tables).

Exit codes: 0 written; 1 no complete run to tabulate (the failed list is still written);
2 bad input (unknown experiment, parent run or baseline row, bad spec); 3 the ablation grid was
interrupted (tables of the finished trials are written; continue with --resume).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from msc_platform.ablation import run_ablation
from msc_platform.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from msc_platform.cluster import ClusterError
from msc_platform.commands.sweep import add_run_arguments
from msc_platform.config import ConfigError
from msc_platform.report import ReportError, ReportResult, write_report
from msc_platform.run_records import RunLookupError
from msc_platform.sweep import SweepSpecError

EXIT_NO_COMPLETE_RUN, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 3
DEFAULT_TABLES_ROOT = Path("runs") / "tables"


def register(subparsers) -> None:
    """Add `msc tables` and `msc ablation` to the `msc` command."""
    tables = subparsers.add_parser(
        "tables", help="write tables and plots of an MLflow experiment (ablation grid or sweep)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tables.add_argument("--experiment", required=True, help="MLflow experiment name")
    tables.add_argument("--parent", default=None, metavar="RUN_ID", help="only the trials of this sweep parent run")
    tables.add_argument("--out", default=None, help="output folder (default: runs/tables/<experiment>)")
    tables.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    tables.add_argument("--no-log", action="store_true", help="do not log the tables to the sweep's parent run")
    _add_report_options(tables)
    tables.set_defaults(func=run_tables)

    ablation = subparsers.add_parser(
        "ablation", help="run an ablation grid (experiments/ablations/*.yaml) and write its tables",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(ablation, "grid", "experiments/ablations/components.yaml", "seeds=[0]")
    ablation.add_argument("--out", default=None, help="tables folder (default: runs/ablations/<name>/tables)")
    _add_report_options(ablation)
    ablation.set_defaults(func=run_ablation_command)


def _add_report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", default=None, help="baseline row (default: the row named *baseline*)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--bootstrap-seed", type=int, default=DEFAULT_SEED, help="bootstrap RNG seed")


def _fail(message: str) -> int:
    print(f"msc: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run_tables(args: argparse.Namespace) -> int:
    """Write the tables of one experiment; returns the exit code."""
    if args.resamples < 1:
        return _fail(f"--resamples: must be >= 1, got {args.resamples}")
    out = Path(args.out) if args.out else DEFAULT_TABLES_ROOT / args.experiment
    try:
        report = write_report(args.experiment, out, tracking_uri=args.tracking_uri, parent_run_id=args.parent,
                              baseline=args.baseline, resamples=args.resamples, seed=args.bootstrap_seed,
                              log_to_parent=not args.no_log)
    except (RunLookupError, ReportError, ValueError) as err:
        return _fail(str(err))
    print_report(report)
    return 0 if report.complete else EXIT_NO_COMPLETE_RUN


def run_ablation_command(args: argparse.Namespace) -> int:
    """Run the grid, write its tables; returns the exit code."""
    if args.resamples < 1:
        return _fail(f"--resamples: must be >= 1, got {args.resamples}")
    try:
        result = run_ablation(args.spec, args.overrides, address=args.address, resume=args.resume,
                              storage=args.storage, out_dir=Path(args.out) if args.out else None,
                              baseline=args.baseline, resamples=args.resamples, verbose=0 if args.quiet else 1)
    except (SweepSpecError, ConfigError, ConnectionError, ClusterError, RunLookupError, ReportError,
            ValueError) as err:
        return _fail(str(err))
    print_report(result.report)
    print(f"Ray Tune results: {result.outcome.storage_dir}")
    if result.outcome.interrupted:
        print("The grid was interrupted: continue it with `make ablation RESUME=1` (or --resume).")
        return EXIT_INTERRUPTED
    return 0 if result.report.complete else EXIT_NO_COMPLETE_RUN


def print_report(report: ReportResult) -> None:
    """Print the Markdown summary and the files written."""
    print((report.out_dir / "summary.md").read_text(encoding="utf-8"))
    print(f"Wrote {len(report.files)} files to {report.out_dir}"
          + (f"; logged to MLflow run {report.logged_to}" if report.logged_to else ""))

