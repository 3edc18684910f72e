"""`msc ablation` and `msc tables`: shipped grids load, bad input is refused, and a tiny grid runs
end to end through the real sweep runner (Ray Tune grid, MLflow) into tables."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from msc_platform.cli.main import main
from msc_platform.reports.tables import PAPER_SUMR_QVHIGHLIGHTS
from msc_platform.sweeps.runner import load_sweep_spec
from tests.platform.conftest import SYNTHETIC_CONFIG, TINY
from tests.platform.mlflow_runs import log_trial, new_store, start_parent

REPO_ROOT = Path(__file__).resolve().parents[3]
ABLATIONS = REPO_ROOT / "experiments" / "ablations"
PAPER_ROWS = {  # docs/model.md, Ablation rows, in config terms: (tcp, cbva, clip_tokens)
    "a_baseline": (False, "off", "uniform"),
    "b_tcp": (True, "off", "uniform"),
    "c_cbva_uniform": (True, "fixed", "uniform"),
    "d_optome": (True, "fixed", "optome"),
    "e_adaptive": (True, "adaptive", "optome"),
}


def test_components_grid_is_paper_table_1_times_three_seeds():
    spec = load_sweep_spec(ABLATIONS / "components.yaml")
    assert spec.is_grid and spec.seeds == [0, 1, 2] and spec.total_trials == 15
    for row, (tcp, cbva, clip_tokens) in PAPER_ROWS.items():
        assert spec.rows[row] == {"model.tcp": tcp, "model.cbva": cbva, "model.clip_tokens": clip_tokens}


def test_qvhighlight_components_grid_is_table_1_at_the_paper_settings():
    spec = load_sweep_spec(ABLATIONS / "components_qvhighlight.yaml")
    synthetic = load_sweep_spec(ABLATIONS / "components.yaml")
    assert spec.rows == synthetic.rows and spec.is_grid and spec.total_trials == 15
    assert spec.seeds[0] == 9527 and len(spec.seeds) == 3
    base = spec.base
    assert (base.data.collection, base.model.video_dim, base.model.text_dim) == ("qvhighlight", 2816, 512)
    assert (base.train.epochs, base.train.patience, base.train.lr, base.model.sim_thr) == (100, 10, 2.5e-4, 0.7)
    assert set(spec.rows) == set(PAPER_SUMR_QVHIGHLIGHTS)  # every row gets its paper SumR column


def test_sensitivity_grid_is_one_factor_at_a_time_around_the_default():
    spec = load_sweep_spec(ABLATIONS / "sensitivity.yaml")
    model = spec.base.model
    assert (model.sim_thr, model.rkd_d_coef, model.rkd_a_coef, model.vl_coef) == (0.8, 15.0, 30.0, 0.1)
    assert spec.rows["default"] == {}
    factors = {name.split("__")[0]: set() for name in spec.rows if name != "default"}
    for name, overrides in spec.rows.items():
        if name != "default":
            factors[name.split("__")[0]] |= set(overrides)
    assert factors == {"sim_thr": {"model.sim_thr"}, "rkd": {"model.rkd_d_coef", "model.rkd_a_coef"},
                       "vl_coef": {"model.vl_coef"}}
    pairs = {(o["model.rkd_d_coef"], o["model.rkd_a_coef"]) for n, o in spec.rows.items() if n.startswith("rkd")}
    assert all(a == 2 * d for d, a in pairs)  # the paper keeps angle = 2 x distance
    assert spec.rows["sim_thr__0.5"] == {"model.sim_thr": 0.5}  # the released command's value
    assert (10.0, 20.0) in pairs  # ... and its RKD pair


def test_ablation_refuses_a_search_spec_before_ray_starts(capsys):
    assert main(["ablation", str(REPO_ROOT / "experiments" / "sweeps" / "default.yaml")]) == 2
    assert "needs a grid" in capsys.readouterr().err


def test_tables_command_reports_unknown_experiment_and_no_complete_run(tmp_path, capsys):
    client = new_store(tmp_path / "store")
    experiment_id, parent = start_parent(client, "only-failed", "only-failed")
    log_trial(client, experiment_id, parent, params={"model.tcp": "True"}, row="a_baseline", seed=0, status="FAILED")
    uri = client.tracking_uri
    assert main(["tables", "--experiment", "missing", "--tracking-uri", uri]) == 2
    assert "'missing' not found" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["tables", "--experiment", "only-failed", "--tracking-uri", uri, "--out", str(out)]) == 1
    assert pd.read_csv(out / "incomplete.csv")["status"].tolist() == ["FAILED"]
    assert "non-finite loss" in (out / "summary.md").read_text()


def _tiny_grid_spec(path: Path, data_root: Path) -> Path:
    overrides = {
        "data.root": str(data_root), "data.synthetic_preset": None, "data.num_workers": 0,
        "model.text_dim": TINY.text_dim, "model.video_dim": TINY.video_dim, "model.hidden": 32,
        "model.heads": 2, "model.hard_negative_start": 1, "train.batch_size": 8, "train.epochs": 1,
        "train.lr": 2e-3, "train.patience": 5, "train.device": "cpu", "train.deterministic": True,
        "train.progress": False, "tracking.log_checkpoint": False,
    }
    spec = {"name": "tinygrid", "base_config": str(SYNTHETIC_CONFIG), "experiment": "tiny-ablation",
            "overrides": overrides, "max_concurrent_trials": 2, "resources": {"cpu": 1}, "max_failures": 0,
            "rows": {"a_baseline": {"model.tcp": False, "model.cbva": "off", "model.clip_tokens": "uniform"},
                     "e_adaptive": {"model.tcp": True, "model.cbva": "adaptive", "model.clip_tokens": "optome"}},
            "seeds": [0]}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_tiny_grid_runs_through_the_sweep_runner_into_tables(tiny_data_root, mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _tiny_grid_spec(tmp_path / "grid.yaml", tiny_data_root)
    out = tmp_path / "tables"
    assert main(["ablation", str(spec), "--quiet", "--out", str(out), "--resamples", "500"]) == 0

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("tiny-ablation")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(run for run in runs if run.data.tags.get("msc.role") == "sweep-parent")
    trials = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted((t.data.tags["msc.row"], t.data.tags["msc.seed"]) for t in trials) == [
        ("a_baseline", "0"), ("e_adaptive", "0")]
    assert all(t.info.status == "FINISHED" for t in trials)

    table = pd.read_csv(out / "results.csv").set_index("row")
    for row in ("a_baseline", "e_adaptive"):
        sumr = [t.data.metrics[key] for t in trials if t.data.tags["msc.row"] == row
                for key in t.data.metrics if key.replace("@", "") == "best/SumR"]
        assert table.loc[row, "seeds"] == len(sumr) == 1
        assert table.loc[row, "SumR_mean"] == pytest.approx(sumr[0])
        assert math.isnan(table.loc[row, "SumR_std"])
    assert 0.0 <= table.loc["e_adaptive", "p_value"] <= 1.0
    assert pd.read_csv(out / "incomplete.csv").empty
    for name in ("summary.md", "results.tex", "results.parquet", "diagnostics.csv", "sumr_by_row.png",
                 "training_curves.png"):
        assert (out / name).stat().st_size > 0
    logged = {info.path for info in client.list_artifacts(parent.info.run_id, "tables")}
    assert {"tables/summary.md", "tables/results.csv", "tables/training_curves.png"} <= logged
