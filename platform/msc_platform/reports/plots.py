"""PNG figures of a grid or sweep, drawn headless with matplotlib's Agg canvas.

No pyplot state is touched: each figure is a `matplotlib.figure.Figure` saved directly, so
this works without a display and inside Ray workers. A figure is a grid of panels of
PANEL_INCHES at DPI, at most MAX_COLUMNS across, so its pixel size is known in advance
(`figure_pixels`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from msc_platform.names import BEST_SUMR
from msc_platform.reports.records import RunRecord
from msc_platform.reports.tables import is_number

DPI = 100
PANEL_INCHES = (4.8, 3.6)
MAX_COLUMNS = 3
SUMR_METRIC = BEST_SUMR
MAX_EPOCH_TICKS = 12  # up to this many epochs, every epoch gets its own tick


def panel_grid(panels: int) -> tuple[int, int]:
    """(columns, rows) of a figure with `panels` panels."""
    columns = max(1, min(panels, MAX_COLUMNS))
    return columns, max(1, math.ceil(panels / columns))


def figure_pixels(panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a saved figure with `panels` panels."""
    columns, rows = panel_grid(panels)
    return round(columns * PANEL_INCHES[0] * DPI), round(rows * PANEL_INCHES[1] * DPI)


def _figure(panels: int) -> tuple[Figure, list]:
    columns, rows = panel_grid(panels)
    figure = Figure(figsize=(columns * PANEL_INCHES[0], rows * PANEL_INCHES[1]), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _spread_panel(axis, names: Sequence[str], values: Sequence[Sequence[float]], title: str, xlabel: str,
                  ordered: bool = True) -> None:
    """Mean ± std (error bars) per category with every seed's value as a dot; the means are
    joined by a line only when the categories are `ordered` values of one factor."""
    positions = np.arange(len(names))
    means = [float(np.mean(v)) for v in values]
    stds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]
    axis.errorbar(positions, means, yerr=stds, fmt="o-" if ordered else "o", capsize=4, color="tab:blue",
                  label="mean ± std")
    for position, seed_values in zip(positions, values, strict=True):
        axis.scatter([position] * len(seed_values), seed_values, s=12, color="tab:orange", zorder=3)
    crowded = len(names) > 3
    axis.set_xticks(positions, list(names), rotation=30 if crowded else 0, ha="right" if crowded else "center")
    axis.set(title=title, xlabel=xlabel, ylabel="SumR")
    axis.grid(alpha=0.3)


def _sumr(runs: list[RunRecord]) -> list[float]:
    return [run.metric(SUMR_METRIC) for run in runs]


def plot_row_sumr(groups: dict[str, list[RunRecord]], path: Path) -> Path:
    """SumR per ablation row: mean ± std over seeds and each seed as a dot."""
    figure, (axis,) = _figure(1)
    _spread_panel(axis, list(groups), [_sumr(runs) for runs in groups.values()], "SumR per row", "row",
                  ordered=False)
    return _save(figure, path)


def plot_factor_sumr(factors: dict[str, dict[str, list[RunRecord]]], path: Path) -> Path:
    """One panel per sensitivity factor: SumR against the factor's values, seed spread shown.

    `factors` maps factor name -> {value label: runs}, values in display order.
    """
    figure, axes = _figure(len(factors))
    for axis, (factor, by_value) in zip(axes, factors.items(), strict=True):
        _spread_panel(axis, list(by_value), [_sumr(runs) for runs in by_value.values()], f"SumR vs {factor}", factor)
    return _save(figure, path)


def plot_param_sumr(runs: list[RunRecord], keys: list[str], path: Path) -> Path:
    """One panel per swept parameter: each complete trial's SumR against its value.

    Numeric parameters use a numeric axis (log scale when they span over two decades);
    others are grouped per value with the seed spread.
    """
    figure, axes = _figure(max(1, len(keys)))
    for axis, key in zip(axes, keys, strict=False):
        values = [run.params.get(key) for run in runs]
        if all(is_number(v) for v in values):
            x = np.array([float(v) for v in values])
            axis.scatter(x, _sumr(runs), s=16, color="tab:blue")
            if x.min() > 0 and x.max() / x.min() > 100:
                axis.set_xscale("log")
            axis.set(title=f"SumR vs {key}", xlabel=key, ylabel="SumR")
            axis.grid(alpha=0.3)
        else:
            names = sorted({str(v) for v in values})
            grouped = [[run.metric(SUMR_METRIC) for run, v in zip(runs, values, strict=True)
                        if str(v) == name] for name in names]
            _spread_panel(axis, names, grouped, f"SumR vs {key}", key, ordered=False)
    if not keys:
        axes[0].text(0.5, 0.5, "no parameter varies", ha="center", va="center")
    return _save(figure, path)


def plot_importances(importances: dict[str, float], path: Path) -> Path:
    """Horizontal bars of Optuna parameter importances, most important on top."""
    figure, (axis,) = _figure(1)
    names = list(importances)[::-1]
    axis.barh(names, [importances[name] for name in names], color="tab:green")
    axis.set(title="Parameter importance for SumR (fANOVA)", xlabel="importance")
    axis.tick_params(axis="y", labelsize=7)
    return _save(figure, path)


def plot_training_curves(curves: dict[str, dict[str, list[list[tuple[int, float]]]]], path: Path) -> Path:
    """One panel per metric: each row's per-epoch mean over seeds, min–max over seeds shaded.

    `curves` maps metric name -> {row: [one seed's (step, value) pairs, ...]}.
    """
    figure, axes = _figure(max(1, len(curves)))
    for axis, (metric, by_row) in zip(axes, curves.items(), strict=False):
        epochs: set[int] = set()
        for row, histories in by_row.items():
            steps, values = _aligned(histories)
            if steps.size == 0:
                continue
            epochs.update(steps.tolist())
            axis.plot(steps, values.mean(axis=0), marker="o", markersize=3, label=row)
            axis.fill_between(steps, values.min(axis=0), values.max(axis=0), alpha=0.2)
        axis.set(title=metric, xlabel="epoch", ylabel=metric)
        if 0 < len(epochs) <= MAX_EPOCH_TICKS:
            axis.set_xticks(sorted(epochs))
        else:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    return _save(figure, path)


def _aligned(histories: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Steps every seed logged, and the values there: ([T], [seeds, T])."""
    histories = [dict(history) for history in histories if history]
    if not histories:
        return np.array([]), np.empty((0, 0))
    steps = sorted(set.intersection(*(set(history) for history in histories)))
    values = np.array([[history[step] for step in steps] for history in histories])
    return np.array(steps), values
