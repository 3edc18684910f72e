"""`msc tables`: the tables and plots of an MLflow experiment (an ablation grid or a sweep).

Exit codes: 0 written; 1 no complete run to tabulate (the failed list is still written);
2 bad input (unknown experiment, parent run or baseline row).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from msc_platform.cli.common import fail
from msc_platform.reports.records import RunLookupError
from msc_platform.reports.report import ReportError, ReportResult, write_report
from msc_platform.reports.statistics import DEFAULT_RESAMPLES, DEFAULT_SEED

EXIT_NO_COMPLETE_RUN = 1
DEFAULT_TABLES_ROOT = Path("runs") / "tables"


def register(subparsers) -> None:
    """Add `msc tables` to the `msc` command."""
    tables = subparsers.add_parser(
        "tables", help="write tables and plots of an MLflow experiment (ablation grid or sweep)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tables.add_argument("--experiment", required=True, help="MLflow experiment name")
    tables.add_argument("--parent", default=None, metavar="RUN_ID", help="only the trials of this sweep parent run")
    tables.add_argument("--out", default=None, help="output folder (default: runs/tables/<experiment>)")
    tables.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    tables.add_argument("--no-log", action="store_true", help="do not log the tables to the sweep's parent run")
    add_report_options(tables)
    tables.set_defaults(func=run_tables)


def add_report_options(parser: argparse.ArgumentParser) -> None:
    """--baseline, --resamples and --bootstrap-seed: the statistics options of a report."""
    parser.add_argument("--baseline", default=None, help="baseline row (default: the row named *baseline*)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--bootstrap-seed", type=int, default=DEFAULT_SEED, help="bootstrap RNG seed")


def run_tables(args: argparse.Namespace) -> int:
    """Write the tables of one experiment; returns the exit code."""
    if args.resamples < 1:
        return fail(f"--resamples: must be >= 1, got {args.resamples}")
    out = Path(args.out) if args.out else DEFAULT_TABLES_ROOT / args.experiment
    try:
        report = write_report(args.experiment, out, tracking_uri=args.tracking_uri, parent_run_id=args.parent,
                              baseline=args.baseline, resamples=args.resamples, seed=args.bootstrap_seed,
                              log_to_parent=not args.no_log)
    except (RunLookupError, ReportError, ValueError) as err:
        return fail(str(err))
    print_report(report)
    return 0 if report.complete else EXIT_NO_COMPLETE_RUN


def print_report(report: ReportResult) -> None:
    """Print the Markdown summary and the files written."""
    print((report.out_dir / "summary.md").read_text(encoding="utf-8"))
    print(f"Wrote {len(report.files)} files to {report.out_dir}"
          + (f"; logged to MLflow run {report.logged_to}" if report.logged_to else ""))

