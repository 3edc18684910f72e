"""Write every table and plot of one MLflow experiment (or one sweep) into a folder.

`write_report` reads the runs with the MLflow client, builds the tables (`tables`), renders
them (`table_render`), draws the plots (`plots`), writes Markdown (`summary.md`, all tables),
LaTeX, CSV and Parquet per table, and logs the files it wrote to the sweep's parent run under
`tables/`. Failed or incomplete runs go to `incomplete.csv` and a section of the Markdown.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from msc_platform.names import LOSS_TOTAL, VAL_SUMR
from msc_platform.reports import plots
from msc_platform.reports.importance import param_importances
from msc_platform.reports.records import (
    RanksLoader,
    RunRecord,
    collect_runs,
    metric_history,
    parent_run_ids,
)
from msc_platform.reports.rendering import (
    DisplayTable,
    diagnostics_display,
    incomplete_display,
    main_display,
    sweep_display,
    to_latex,
    to_markdown,
)
from msc_platform.reports.statistics import DEFAULT_RESAMPLES, DEFAULT_SEED
from msc_platform.reports.tables import (
    ablation_table,
    complete_rows,
    diagnostics_table,
    incomplete_table,
    sensitivity_table,
    sweep_table,
    table_kind,
    varied_keys,
)

ARTIFACT_DIR = "tables"
CURVE_METRICS = (VAL_SUMR, LOSS_TOTAL)
BOOTSTRAP_NOTE = (
    "p: one-sided paired bootstrap over queries ({resamples} resamples, seed {seed}); per query the "
    "SumR contribution sum_K 100·[rank ≤ K] is averaged over seeds, queries are matched by cap_id, "
    "and p is the fraction of resamples where the row's SumR minus the baseline's is ≤ 0."
)


class ReportError(RuntimeError):
    """Nothing to tabulate: the experiment or sweep has no trial runs."""


@dataclass
class ReportResult:
    """What `write_report` wrote and where it logged it."""

    out_dir: Path
    kind: str
    complete: int
    incomplete: int
    files: list[Path] = field(default_factory=list)
    logged_to: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _Writer:
    out_dir: Path
    markdown: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def table(self, name: str, title: str, numeric: pd.DataFrame, display: DisplayTable) -> None:
        """Write name.csv, name.parquet, name.tex and add a Markdown section."""
        for suffix, write in ((".csv", lambda p: numeric.to_csv(p, index=False)),
                              (".parquet", lambda p: numeric.to_parquet(p, engine="pyarrow", index=False)),
                              (".tex", lambda p: p.write_text(to_latex(display), encoding="utf-8"))):
            path = self.out_dir / f"{name}{suffix}"
            write(path)
            self.files.append(path)
        self.markdown += [f"## {title}", "", to_markdown(display)]

    def plot(self, title: str, path: Path) -> None:
        self.files.append(path)
        self.markdown += [f"## {title}", "", f"![{title}]({path.name})", ""]


def write_report(experiment: str, out_dir: Path, *, tracking_uri: str | None = None,
                 parent_run_id: str | None = None, baseline: str | None = None,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                 log_to_parent: bool = True) -> ReportResult:
    """Tables and plots of `experiment` (only `parent_run_id`'s trials when given) into `out_dir`.

    Raises run_records.RunLookupError for an unknown experiment or parent run, ReportError when
    there is no trial run, ValueError for an unknown baseline row.
    """
    client = MlflowClient(tracking_uri)
    records = collect_runs(client, experiment, parent_run_id)
    if not records:
        raise ReportError(f"MLflow experiment {experiment!r} has no trial runs"
                          + (f" under parent run {parent_run_id}" if parent_run_id else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = table_kind(records)
    complete = [record for record in records if record.complete]
    result = ReportResult(out_dir, kind, len(complete), len(records) - len(complete))
    writer = _Writer(out_dir)
    writer.markdown += _heading(experiment, kind, records, parent_run_id, client.tracking_uri)
    if parent_run_id is None and len(parent_run_ids(records)) > 1:
        result.notes.append(f"runs of {len(parent_run_ids(records))} sweeps are combined (the newest run per row "
                            "and seed counts); pass --parent RUN_ID to tabulate one sweep")
    if complete:
        table = _main_tables(writer, records, kind, client, baseline, resamples, seed, result.notes)
        _plots(writer, records, kind, table, client, result.notes)
    else:
        result.notes.append("no complete run: only the failed / incomplete list was written")
    _incomplete(writer, records)
    target = _log_target(records, parent_run_id, result.notes) if log_to_parent else None
    writer.markdown += ["## Notes", ""] + [f"- {note}" for note in result.notes] + [""]
    summary = out_dir / "summary.md"
    summary.write_text("\n".join(writer.markdown), encoding="utf-8")
    result.files = [summary] + writer.files
    if target is not None:
        for path in result.files:
            client.log_artifact(target, str(path), ARTIFACT_DIR)
        result.logged_to = target
    return result


def _heading(experiment: str, kind: str, records: list[RunRecord], parent: str | None, uri: str) -> list[str]:
    parents = [parent] if parent else parent_run_ids(records)
    complete = sum(record.complete for record in records)
    return [f"# {kind.capitalize()} tables: {experiment}", "",
            f"- tracking URI: `{uri}`; parent run(s): {', '.join(parents) or 'none'}",
            f"- runs: {len(records)} ({complete} complete, {len(records) - complete} failed or incomplete)", ""]


def _main_tables(writer: _Writer, records: list[RunRecord], kind: str, client: MlflowClient,
                 baseline: str | None, resamples: int, seed: int, notes: list[str]) -> pd.DataFrame:
    """Write the main table (and diagnostics for grids); returns the main numeric table."""
    if kind == "sweep":
        table = sweep_table(records)
        keys = varied_keys([record for record in records if record.complete])
        writer.table("results", "Trials (best SumR first)", table, sweep_display(table, keys))
        return table
    ranks = RanksLoader(client)
    if kind == "sensitivity":
        table = sensitivity_table(records, ranks, resamples, seed)
    else:
        table = ablation_table(records, ranks, baseline, resamples, seed)
    writer.table("results", "Retrieval (mean ± std over seeds)", table, main_display(table, kind, resamples))
    diagnostics = diagnostics_table(records, table)
    writer.table("diagnostics", "Semantic-collapse diagnostics", diagnostics, diagnostics_display(diagnostics, kind))
    notes.append(BOOTSTRAP_NOTE.format(resamples=resamples, seed=seed))
    rowless = sum(record.complete and record.row is None for record in records)
    if rowless:
        notes.append(f"{rowless} complete runs without an msc.row tag (a plain sweep?) are left out of the grid "
                     "tables; pass --parent RUN_ID to tabulate one sweep")
    if table["p_value"].isna().sum() > table["is_baseline"].sum():
        notes.append("p = n/a: a run of that row or of the baseline has no ranks.parquet artifact")
    return table


def _plots(writer: _Writer, records: list[RunRecord], kind: str, table: pd.DataFrame,
           client: MlflowClient, notes: list[str]) -> None:
    out = writer.out_dir
    complete = [record for record in records if record.complete]
    groups = complete_rows(records)
    if kind == "ablation":
        writer.plot("SumR per row", plots.plot_row_sumr(groups, out / "sumr_by_row.png"))
    elif kind == "sensitivity":
        factors = _factor_values(table, groups)
        writer.plot("SumR per factor value", plots.plot_factor_sumr(factors, out / "sumr_by_factor.png"))
    else:
        keys = varied_keys(complete)
        writer.plot("SumR per swept parameter", plots.plot_param_sumr(complete, keys, out / "sumr_by_param.png"))
    importances, note = param_importances(complete, varied_keys(complete))
    notes.append(note)
    if importances:
        path = out / "importances.csv"
        pd.DataFrame({"param": list(importances), "importance": list(importances.values())}).to_csv(path, index=False)
        writer.files.append(path)
        writer.plot("Parameter importances", plots.plot_importances(importances, out / "importances.png"))
    if kind != "sweep":
        curves = {metric: {row: [metric_history(client, run.run_id, metric) for run in runs]
                           for row, runs in groups.items()} for metric in CURVE_METRICS}
        writer.plot("Training curves", plots.plot_training_curves(curves, out / "training_curves.png"))


def _factor_values(table: pd.DataFrame, groups: dict[str, list[RunRecord]]) -> dict[str, dict[str, list[RunRecord]]]:
    """factor -> {value label: runs}, in the labels and order of the sensitivity table."""
    factors: dict[str, dict[str, list[RunRecord]]] = {}
    for group, row, label in table[["group", "row", "label"]].itertuples(index=False):
        factors.setdefault(group, {})[label] = groups[row]
    return factors


def _incomplete(writer: _Writer, records: list[RunRecord]) -> None:
    table = incomplete_table(records)
    for suffix, write in ((".csv", lambda p: table.to_csv(p, index=False)),
                          (".parquet", lambda p: table.to_parquet(p, engine="pyarrow", index=False))):
        path = writer.out_dir / f"incomplete{suffix}"
        write(path)
        writer.files.append(path)
    writer.markdown += ["## Failed / incomplete runs (not averaged in)", ""]
    writer.markdown += [to_markdown(incomplete_display(table)) if len(table) else "None.", ""]


def _log_target(records: list[RunRecord], parent: str | None, notes: list[str]) -> str | None:
    """The sweep parent run to log the folder to, or None (with a note) when not unique."""
    parents = [parent] if parent else parent_run_ids(records)
    if len(parents) != 1:
        notes.append(f"not logged to MLflow: {len(parents)} parent runs (pass --parent RUN_ID)")
        return None
    notes.append(f"logged to parent run {parents[0]} under artifacts/{ARTIFACT_DIR}/")
    return parents[0]
