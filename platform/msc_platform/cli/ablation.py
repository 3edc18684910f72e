"""`msc ablation SPEC`: run an ablation grid (experiments/ablations/*.yaml), then write its tables.

Exit codes: 0 written; 1 no complete run to tabulate; 2 bad input (bad spec, override, cluster
address, baseline row); 3 the grid was interrupted (tables of the finished trials are written;
continue with --resume), or its local Ray died under it (no tables; continue with --resume).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from msc_platform.cli.common import add_run_arguments, fail
from msc_platform.cli.tables import EXIT_NO_COMPLETE_RUN, add_report_options, print_report
from msc_platform.cluster.address import check_address
from msc_platform.cluster.local import ClusterError
from msc_platform.reports.records import RunLookupError
from msc_platform.reports.report import ReportError
from msc_platform.run.config import ConfigError
from msc_platform.sweeps.spec import SweepSpecError

EXIT_INTERRUPTED = 3


def register(subparsers) -> None:
    """Add `msc ablation` to the `msc` command."""
    ablation = subparsers.add_parser(
        "ablation", help="run an ablation grid (experiments/ablations/*.yaml) and write its tables",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(ablation, "grid", "experiments/ablations/components.yaml", "seeds=[0]")
    ablation.add_argument("--out", default=None, help="tables folder (default: runs/ablations/<name>/tables)")
    add_report_options(ablation)
    ablation.set_defaults(func=run_ablation_command)


def run_ablation_command(args: argparse.Namespace) -> int:
    """Run the grid, write its tables; returns the exit code."""
    if args.resamples < 1:
        return fail(f"--resamples: must be >= 1, got {args.resamples}")
    try:
        address = args.address or os.environ.get("RAY_ADDRESS")
        if address:
            check_address(address)
        # Ray, Tune and torch take seconds to import: only once the address answers.
        from msc_platform.sweeps.ablation import run_ablation
        result = run_ablation(args.spec, args.overrides, address=args.address, resume=args.resume,
                              storage=args.storage, out_dir=Path(args.out) if args.out else None,
                              baseline=args.baseline, resamples=args.resamples, verbose=0 if args.quiet else 1)
    except (SweepSpecError, ConfigError, ConnectionError, ClusterError, RunLookupError, ReportError,
            ValueError) as err:
        return fail(str(err))
    print_report(result.report)
    print(f"Ray Tune results: {result.outcome.storage_dir}")
    if result.outcome.interrupted:
        print("The grid was interrupted: continue it with `make ablation RESUME=1` (or --resume).")
        return EXIT_INTERRUPTED
    return 0 if result.report.complete else EXIT_NO_COMPLETE_RUN
