"""Turn the numeric tables of `tables` into display cells, then into Markdown and LaTeX.

Metrics show as `mean ± std` (std "–" for one seed), the best mean of each metric column
(within each factor group) in bold, Δ SumR signed, p-values with three decimals ("< 1/B"
when no resample fell at or below zero). LaTeX uses booktabs rules (\\toprule, \\midrule,
\\bottomrule) and a \\midrule between factor groups.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from msc_platform.reports.records import DIAGNOSTIC_NAMES, RECALL_NAMES

DASH = "–"
RECALL_DIGITS = 1
DIAGNOSTIC_DIGITS = {"diffnorm_text": 3, "diffnorm_video": 3, "spearman": 1}
DIAGNOSTIC_HEADERS = {"diffnorm_text": "Diff.Norm text", "diffnorm_video": "Diff.Norm video",
                      "spearman": "Spearman"}
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", DASH: "--", "Δ": r"$\Delta$", "<": r"$<$", ">": r"$>$",
}


@dataclass
class Cell:
    """One displayed value."""

    text: str
    bold: bool = False


@dataclass
class DisplayTable:
    """Header, rows of cells, how many leading text columns, and where factor groups start."""

    header: list[str]
    rows: list[list[Cell]]
    text_columns: int = 1
    group_starts: set[int] = field(default_factory=set)


def format_mean_std(mean: float, std: float, digits: int) -> str:
    """`mean ± std` with `digits` decimals; std shows as '–' when NaN, the whole as 'n/a'."""
    if math.isnan(mean):
        return "n/a"
    spread = DASH if math.isnan(std) else f"{std:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread}"


def format_p(p_value: float, resamples: int, is_baseline: bool) -> str:
    """Three-decimal p-value; '–' for the baseline, 'n/a' without ranks, '< 1/B' at zero."""
    if is_baseline:
        return DASH
    if math.isnan(p_value):
        return "n/a"
    if p_value == 0.0:
        return f"< {1.0 / resamples:g}"
    return f"{p_value:.3f}"


def _best_flags(table: pd.DataFrame, column: str, digits: int) -> pd.Series:
    """True where the rounded value is the highest of its group (ties all True)."""
    rounded = table[column].round(digits)
    return rounded.eq(rounded.groupby(table["group"]).transform("max")) & rounded.notna()


def _group_starts(table: pd.DataFrame) -> tuple[set[int], list[str]]:
    groups = table["group"].tolist()
    starts = {i for i in range(1, len(groups)) if groups[i] != groups[i - 1]}
    shown = [group if i == 0 or i in starts else "" for i, group in enumerate(groups)]
    return starts, shown


def main_display(table: pd.DataFrame, kind: str, resamples: int) -> DisplayTable:
    """Display of an ablation or sensitivity table (see `tables.ablation_table`)."""
    starts, groups = _group_starts(table)
    bold = {name: _best_flags(table, f"{name}_mean", RECALL_DIGITS) for name in RECALL_NAMES}
    paper = "paper_SumR" in table.columns
    header = (["Factor", "Value"] if kind == "sensitivity" else ["Row"]) + list(RECALL_NAMES)
    header += ["seeds", "Δ SumR", "p"] + (["paper SumR"] if paper else [])
    rows = []
    for i, entry in enumerate(table.to_dict("records")):
        cells = [Cell(groups[i]), Cell(entry["label"])] if kind == "sensitivity" else [Cell(entry["label"])]
        cells += [Cell(format_mean_std(entry[f"{n}_mean"], entry[f"{n}_std"], RECALL_DIGITS), bool(bold[n].iloc[i]))
                  for n in RECALL_NAMES]
        cells += [Cell(str(entry["seeds"])),
                  Cell(DASH if entry["is_baseline"] else f"{entry['delta_SumR']:+.{RECALL_DIGITS}f}"),
                  Cell(format_p(entry["p_value"], resamples, entry["is_baseline"]))]
        if paper:
            cells.append(Cell("n/a" if math.isnan(entry["paper_SumR"]) else f"{entry['paper_SumR']:.1f}"))
        rows.append(cells)
    return DisplayTable(header, rows, 2 if kind == "sensitivity" else 1, starts)


def diagnostics_display(table: pd.DataFrame, kind: str) -> DisplayTable:
    """Display of `tables.diagnostics_table`: Diff.Norm text/video and Spearman per row."""
    starts, groups = _group_starts(table)
    bold = {name: _best_flags(table, f"{name}_mean", DIAGNOSTIC_DIGITS[name]) for name in DIAGNOSTIC_NAMES}
    header = (["Factor", "Value"] if kind == "sensitivity" else ["Row"])
    header += [DIAGNOSTIC_HEADERS[name] for name in DIAGNOSTIC_NAMES] + ["seeds"]
    rows = []
    for i, entry in enumerate(table.to_dict("records")):
        cells = [Cell(groups[i]), Cell(entry["label"])] if kind == "sensitivity" else [Cell(entry["label"])]
        cells += [Cell(format_mean_std(entry[f"{n}_mean"], entry[f"{n}_std"], DIAGNOSTIC_DIGITS[n]),
                       bool(bold[n].iloc[i])) for n in DIAGNOSTIC_NAMES]
        cells.append(Cell(str(entry["seeds"])))
        rows.append(cells)
    return DisplayTable(header, rows, 2 if kind == "sensitivity" else 1, starts)


def sweep_display(table: pd.DataFrame, param_keys: list[str]) -> DisplayTable:
    """Display of `tables.sweep_table`: one row per trial, best value of each metric in bold."""
    flat = table.assign(group="")
    names = list(RECALL_NAMES) + list(DIAGNOSTIC_NAMES)
    digits = {**{name: RECALL_DIGITS for name in RECALL_NAMES}, **DIAGNOSTIC_DIGITS}
    bold = {name: _best_flags(flat, name, digits[name]) for name in names}
    header = ["Trial"] + param_keys + [DIAGNOSTIC_HEADERS.get(name, name) for name in names]
    rows = []
    for i, entry in enumerate(table.to_dict("records")):
        cells = [Cell(str(entry["trial"]))] + [Cell(str(entry[key])) for key in param_keys]
        cells += [Cell(_plain_number(entry[name], digits[name]), bool(bold[name].iloc[i])) for name in names]
        rows.append(cells)
    return DisplayTable(header, rows, 1 + len(param_keys))


def _plain_number(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def incomplete_display(table: pd.DataFrame) -> DisplayTable:
    """Display of `tables.incomplete_table`."""
    header = ["run", "row", "seed", "status", "problem"]
    rows = [[Cell(f"{entry['run_name']} ({entry['run_id'][:8]})"), Cell(_or_dash(entry["row"])),
             Cell(_or_dash(entry["seed"])), Cell(entry["status"]), Cell(str(entry["problem"]))]
            for entry in table.to_dict("records")]
    return DisplayTable(header, rows, len(header))


def recall_display(metrics: dict[str, float]) -> DisplayTable:
    """R@1/5/10/100 and SumR of one evaluation, a row per branch (fused, clip, frame).

    `metrics` uses evaluate's keys: "R@1" ... "SumR" for fused, "clip/R@1" ... for the others.
    """
    rows = []
    for branch, prefix in (("fused", ""), ("clip", "clip/"), ("frame", "frame/")):
        values = [metrics.get(prefix + name) for name in RECALL_NAMES]
        rows.append([Cell(branch)] + [Cell(_plain_number(v, RECALL_DIGITS)) for v in values])
    return DisplayTable(["branch", *RECALL_NAMES], rows)


def _or_dash(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return str(value)


def to_markdown(display: DisplayTable) -> str:
    """A GitHub-flavoured Markdown pipe table; bold cells as **text**."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    align = [":---"] * display.text_columns + ["---:"] * (len(display.header) - display.text_columns)
    lines = [line(display.header), "|" + "|".join(align) + "|"]
    lines += [line([f"**{c.text}**" if c.bold else c.text for c in row]) for row in display.rows]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters and map ±, –, Δ, <, > to math-safe forms."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def to_latex(display: DisplayTable) -> str:
    """A booktabs `tabular`; bold cells as \\textbf{...}; \\midrule between factor groups."""
    spec = "l" * display.text_columns + "r" * (len(display.header) - display.text_columns)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in display.header) + r" \\", r"\midrule"]
    for i, row in enumerate(display.rows):
        if i in display.group_starts:
            lines.append(r"\midrule")
        cells = [rf"\textbf{{{latex_escape(c.text)}}}" if c.bold else latex_escape(c.text) for c in row]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
