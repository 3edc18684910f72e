"""Plots are valid PNG files of the expected pixel size; importances find the parameter that matters."""
from __future__ import annotations

import struct

import matplotlib.image
import numpy as np
import pytest

from msc_platform.reports import plots
from msc_platform.reports.importance import MIN_TRIALS, param_importances
from msc_platform.reports.records import RunRecord, metric_key

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _record(run_id: str, sumr: float, params: dict, row: str | None = None, seed: int | None = None) -> RunRecord:
    return RunRecord(run_id=run_id, run_name=run_id, status="FINISHED", start_time=0, parent_run_id="p",
                     row=row, seed=seed, trial_id=None, params=params,
                     metrics={metric_key("best/SumR"): sumr})


def _png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk; fails on anything else."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _assert_png(path, panels: int) -> None:
    width, height = _png_size(path)
    assert (width, height) == plots.figure_pixels(panels)
    pixels = matplotlib.image.imread(path)  # [H, W, 4]
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.01  # something was drawn


def test_figure_pixels_follow_the_panel_grid():
    assert plots.figure_pixels(1) == (480, 360)
    assert plots.figure_pixels(3) == (1440, 360)
    assert plots.figure_pixels(4) == (1440, 720)


def test_row_factor_and_param_plots_are_pngs_of_the_expected_size(tmp_path):
    groups = {row: [_record(f"{row}{s}", 100 + i * 5 + s, {}, row, s) for s in range(3)]
              for i, row in enumerate(["a_baseline", "b_tcp", "e_adaptive"])}
    _assert_png(plots.plot_row_sumr(groups, tmp_path / "rows.png"), 1)
    factors = {"sim_thr": {"0.7": groups["a_baseline"], "0.8": groups["b_tcp"]},
               "vl_coef": {"0.1": groups["b_tcp"]}}
    _assert_png(plots.plot_factor_sumr(factors, tmp_path / "factors.png"), 2)
    runs = [_record(f"t{i}", 50.0 + i, {"train.lr": str(10 ** -(i % 4 + 2)), "model.cbva": ["off", "fixed"][i % 2]})
            for i in range(8)]
    _assert_png(plots.plot_param_sumr(runs, ["train.lr", "model.cbva"], tmp_path / "params.png"), 2)


def test_training_curves_average_seeds_at_shared_epochs(tmp_path):
    curves = {"val/SumR": {"a": [[(0, 10.0), (1, 20.0), (2, 25.0)], [(0, 12.0), (1, 22.0)]], "b": [[]]},
              "loss/total": {"a": [[(0, 2.0), (1, 1.0)]]}}
    steps, values = plots._aligned(curves["val/SumR"]["a"])
    assert steps.tolist() == [0, 1] and values.mean(axis=0).tolist() == [11.0, 21.0]
    _assert_png(plots.plot_training_curves(curves, tmp_path / "curves.png"), 2)


def test_importances_rank_the_parameter_that_drives_sumr(tmp_path):
    rng = np.random.default_rng(0)
    runs = []
    for i in range(12):
        lr, dropout = 10 ** rng.uniform(-4, -2), rng.uniform(0.1, 0.4)
        sumr = 100.0 + 40.0 * np.log10(lr) + rng.normal(0, 0.5)
        runs.append(_record(f"t{i}", sumr, {"train.lr": repr(lr), "model.dropout": repr(dropout),
                                            "model.tcp": ["True", "False"][i % 2]}))
    importances, note = param_importances(runs, ["train.lr", "model.dropout", "model.tcp"])
    assert set(importances) == {"train.lr", "model.dropout", "model.tcp"}
    assert max(importances, key=importances.get) == "train.lr" and importances["train.lr"] > 0.5
    assert sum(importances.values()) == pytest.approx(1.0)
    assert "12 trials" in note
    _assert_png(plots.plot_importances(importances, tmp_path / "importances.png"), 1)


def test_importances_skip_with_a_note_when_too_few_trials():
    runs = [_record(f"t{i}", 1.0 + i, {"train.lr": str(i)}) for i in range(MIN_TRIALS - 1)]
    importances, note = param_importances(runs, ["train.lr"])
    assert importances == {} and f"need at least {MIN_TRIALS}" in note
    constant = [_record(f"t{i}", 1.0 + i, {"train.lr": "0.1"}) for i in range(MIN_TRIALS)]
    assert param_importances(constant, ["train.lr"]) == ({}, "importances skipped: no parameter varies "
                                                              "across the complete trials")


def test_importances_skip_with_a_note_when_every_trial_scores_the_same():
    runs = [_record(f"t{i}", 206.06, {"model.tcp": ["True", "False"][i % 2]}) for i in range(MIN_TRIALS)]
    assert param_importances(runs, ["model.tcp"]) == ({}, "importances skipped: every complete trial "
                                                           "has the same best/SumR")
