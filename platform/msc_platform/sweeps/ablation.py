"""Ablation grids: run a grid spec through the sweep runner, then write its tables and plots.

An ablation spec (experiments/ablations/*.yaml) is a sweep spec in grid mode: `rows` (row name
-> dotted config overrides) x `seeds`, run as Ray Tune's own grid by `msc_platform.sweeps.runner.run_sweep`
with each trial's MLflow run tagged msc.ablation / msc.row / msc.seed. Afterwards the tables of
that sweep (its parent run only) go to `runs/ablations/<name>/tables/` and are logged to the
sweep's parent run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from msc_platform.reports.report import ReportResult, write_report
from msc_platform.reports.statistics import DEFAULT_RESAMPLES
from msc_platform.sweeps.records import absolute_tracking_uri
from msc_platform.sweeps.runner import SweepOutcome, SweepSpecError, load_sweep_spec, run_sweep

DEFAULT_ROOT = Path("runs") / "ablations"


@dataclass
class AblationResult:
    """The grid's sweep outcome and the report written from it."""

    outcome: SweepOutcome
    report: ReportResult


def default_tables_dir(name: str) -> Path:
    """runs/ablations/<name>/tables (relative to the working directory)."""
    return DEFAULT_ROOT / name / "tables"


def run_ablation(spec_path: str | Path, overrides: list[str] | None = None, *, address: str | None = None,
                 resume: bool = False, storage: str | None = None, out_dir: Path | None = None,
                 baseline: str | None = None, resamples: int = DEFAULT_RESAMPLES, verbose: int = 1) -> AblationResult:
    """Run the grid of `spec_path` (with `key=value` overrides) and write its tables.

    Raises SweepSpecError for a bad spec or one that is not a grid (before Ray starts), and what
    `run_sweep` / `write_report` raise.
    """
    spec = load_sweep_spec(spec_path, overrides)
    if not spec.is_grid:
        raise SweepSpecError(f"{spec.path}: rows: an ablation needs a grid (`rows` and `seeds`); "
                             "this spec is a search sweep, run it with `msc sweep`")
    outcome = run_sweep(spec, address=address, resume=resume, storage=storage, verbose=verbose)
    report = write_report(outcome.experiment, out_dir or default_tables_dir(spec.name),
                          tracking_uri=absolute_tracking_uri(spec.base.tracking.uri),
                          parent_run_id=outcome.parent_run_id, baseline=baseline, resamples=resamples)
    return AblationResult(outcome, report)
