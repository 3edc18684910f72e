"""Tables read from a small real MLflow store equal an aggregation computed by hand here."""
from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest

from msc_platform.reports.records import (
    RanksLoader,
    RunLookupError,
    RunRecord,
    collect_runs,
    metric_key,
)
from msc_platform.reports.rendering import main_display, to_latex, to_markdown
from msc_platform.reports.report import write_report
from msc_platform.reports.statistics import paired_bootstrap_p
from msc_platform.reports.tables import (
    ablation_table,
    incomplete_table,
    sensitivity_table,
    sweep_table,
    table_kind,
)
from tests.platform.mlflow_runs import (
    log_trial,
    new_store,
    ranks_frame,
    recalls_from_ranks,
    start_parent,
)

CAPS = ["q0", "q1", "q2", "q3", "q4", "q5"]
# fused ranks per (row, seed), in CAPS order
RANKS = {
    ("a_baseline", 1): [1, 7, 20, 150, 3, 2],
    ("a_baseline", 2): [2, 6, 12, 90, 1, 11],
    ("b_tcp", 1): [1, 2, 9, 40, 1, 3],
    ("c_cbva_uniform", 1): [1, 1, 4, 30, 2, 1],
    ("c_cbva_uniform", 2): [3, 1, 5, 101, 1, 6],
}
DIAG = {"diffnorm_text": 0.1, "diffnorm_video": 0.2, "spearman": 50.0}
RESAMPLES = 2000


def _params(row: str, seed: int) -> dict:
    tcp = "False" if row == "a_baseline" else "True"
    cbva = "fixed" if row == "c_cbva_uniform" else "off"
    return {"model.tcp": tcp, "model.cbva": cbva, "model.clip_tokens": "uniform",
            "train.seed": str(seed), "data.collection": "synthetic", "tracking.run_name": f"{row}-{seed}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An ablation grid: 5 complete runs, one FAILED, one still RUNNING, one without best/ metrics,
    one FINISHED but cut short (stop_reason)."""
    client = new_store(tmp_path_factory.mktemp("mlflow"))
    uri = client.tracking_uri
    experiment_id, parent = start_parent(client, "components", "components")
    for (row, seed), fused in RANKS.items():
        order = list(reversed(range(len(CAPS)))) if seed == 2 else list(range(len(CAPS)))  # cap order differs
        best = recalls_from_ranks(fused) | {k: v + seed for k, v in DIAG.items()}
        log_trial(client, experiment_id, parent, params=_params(row, seed), best=best, row=row, seed=seed,
                  ranks=ranks_frame([CAPS[i] for i in order], [fused[i] for i in order]),
                  history={"val/SumR": [100.0 + seed, 150.0 + seed], "loss/total": [2.0, 1.5]})
    log_trial(client, experiment_id, parent, params=_params("b_tcp", 2), row="b_tcp", seed=2, status="FAILED")
    log_trial(client, experiment_id, parent, params=_params("b_tcp", 3), row="b_tcp", seed=3, status="RUNNING")
    log_trial(client, experiment_id, parent, params=_params("c_cbva_uniform", 3), row="c_cbva_uniform", seed=3,
              best={"R@1": 10.0})
    log_trial(client, experiment_id, parent, params=_params("a_baseline", 4), row="a_baseline", seed=4,
              best=recalls_from_ranks([1] * 6), extra_tags={"stop_reason": "stopped by the sweep driver"})
    return uri, client, parent


def _hand_contributions(row: str) -> dict[str, float]:
    """Per cap_id: mean over the row's seeds of sum_K 100*[rank <= K]."""
    seeds = [fused for (name, _), fused in RANKS.items() if name == row]
    return {cap: statistics.mean(sum(100.0 * (fused[i] <= k) for k in (1, 5, 10, 100)) for fused in seeds)
            for i, cap in enumerate(CAPS)}


def test_ablation_table_equals_hand_aggregation(store):
    uri, client, parent = store
    records = collect_runs(client, "components", parent)
    table = ablation_table(records, RanksLoader(client), resamples=RESAMPLES, seed=3).set_index("row")
    assert list(table.index) == ["a_baseline", "b_tcp", "c_cbva_uniform"]
    base_sumr = statistics.mean(recalls_from_ranks(RANKS[("a_baseline", s)])["SumR"] for s in (1, 2))
    for row in table.index:
        runs = [recalls_from_ranks(fused) for (name, _), fused in RANKS.items() if name == row]
        assert table.loc[row, "seeds"] == len(runs)
        for metric in ("R@1", "R@5", "R@10", "R@100", "SumR"):
            values = [run[metric] for run in runs]
            assert table.loc[row, f"{metric}_mean"] == pytest.approx(statistics.mean(values))
            if len(values) > 1:
                assert table.loc[row, f"{metric}_std"] == pytest.approx(statistics.stdev(values))
            else:
                assert math.isnan(table.loc[row, f"{metric}_std"])
        assert table.loc[row, "delta_SumR"] == pytest.approx(statistics.mean(r["SumR"] for r in runs) - base_sumr)
    base = _hand_contributions("a_baseline")
    for row in ("b_tcp", "c_cbva_uniform"):
        contributions = _hand_contributions(row)
        differences = [contributions[cap] - base[cap] for cap in sorted(CAPS)]
        assert table.loc[row, "p_value"] == pytest.approx(paired_bootstrap_p(differences, RESAMPLES, seed=3))
    assert math.isnan(table.loc["a_baseline", "p_value"]) and table.loc["a_baseline", "is_baseline"]


def test_failed_and_incomplete_runs_are_listed_not_averaged(store):
    uri, client, parent = store
    records = collect_runs(client, "components", parent)
    listed = incomplete_table(records).set_index("seed")
    assert listed.loc[2, "status"] == "FAILED" and "non-finite loss" in listed.loc[2, "problem"]
    assert listed.loc[3].shape[0] == 2  # the RUNNING run and the one without best/ metrics
    assert set(listed.loc[3, "problem"]) == {"status RUNNING",
                                             "missing metrics best/R@5, best/R@10, best/R@100, best/SumR"}
    assert listed.loc[4, "problem"] == "grid trial stopped before its last epoch: stopped by the sweep driver"
    table = ablation_table(records, lambda run_id: None, resamples=10).set_index("row")
    assert table.loc["b_tcp", "seeds"] == 1 and table.loc["c_cbva_uniform", "seeds"] == 2


def test_report_files_markdown_latex_csv_parquet_and_artifacts(store, tmp_path):
    uri, client, parent = store
    result = write_report("components", tmp_path / "tables", tracking_uri=uri, parent_run_id=parent,
                          resamples=RESAMPLES, seed=3)
    assert result.kind == "ablation" and result.complete == 5 and result.incomplete == 4
    markdown = (tmp_path / "tables" / "summary.md").read_text()
    results_section = markdown.split("## Retrieval")[1].split("## ")[0]
    table_lines = [line for line in results_section.splitlines() if line.startswith("| ")]
    assert table_lines[0] == "| Row | R@1 | R@5 | R@10 | R@100 | SumR | seeds | Δ SumR | p |"
    assert len(table_lines) == 1 + 3  # header + one line per ablation row
    assert "(b) + TCP" in table_lines[2] and "| 1 |" in table_lines[2] and "± –" in table_lines[2]
    assert "Failed / incomplete" in markdown and "FAILED" in markdown and "status RUNNING" in markdown
    latex = (tmp_path / "tables" / "results.tex").read_text()
    body = latex.split("\\midrule\n", 1)[1].split("\\bottomrule")[0].strip().splitlines()
    assert latex.count("\\toprule") == 1 and len(body) == 3
    assert all(line.count("&") == 8 and line.endswith("\\\\") for line in body)
    assert "$\\Delta$ SumR" in latex and "$\\pm$" in latex
    csv = pd.read_csv(tmp_path / "tables" / "results.csv")
    parquet = pd.read_parquet(tmp_path / "tables" / "results.parquet")
    assert list(csv["row"]) == list(parquet["row"]) == ["a_baseline", "b_tcp", "c_cbva_uniform"]
    assert csv["SumR_mean"].tolist() == pytest.approx(parquet["SumR_mean"].tolist())
    failed = pd.read_csv(tmp_path / "tables" / "incomplete.csv")
    assert sorted(failed["status"]) == ["FAILED", "FINISHED", "FINISHED", "RUNNING"]
    diagnostics = pd.read_csv(tmp_path / "tables" / "diagnostics.csv").set_index("row")
    assert diagnostics.loc["c_cbva_uniform", "spearman_mean"] == pytest.approx(51.5)
    logged = {info.path for info in client.list_artifacts(parent, "tables")}
    assert {"tables/summary.md", "tables/results.tex", "tables/results.csv", "tables/incomplete.csv"} <= logged
    assert result.logged_to == parent


def test_best_value_is_bold_per_column(store):
    uri, client, parent = store
    table = ablation_table(collect_runs(client, "components", parent), lambda run_id: None, resamples=10)
    markdown = to_markdown(main_display(table, "ablation", 10)).splitlines()
    best_row = 2 + int(table["SumR_mean"].idxmax())
    sumr_cells = [line.split("|")[6].strip() for line in markdown[2:]]
    assert [cell.startswith("**") for cell in sumr_cells] == [i + 2 == best_row for i in range(3)]
    assert "\\textbf{" in to_latex(main_display(table, "ablation", 10))


def test_unknown_experiment_and_parent_are_clear_errors(store):
    uri, client, parent = store
    with pytest.raises(RunLookupError, match="nope"):
        collect_runs(client, "nope")
    with pytest.raises(RunLookupError, match="parent run"):
        collect_runs(client, "components", "0" * 32)
    with pytest.raises(ValueError, match="baseline row 'zzz'"):
        ablation_table(collect_runs(client, "components", parent), lambda run_id: None, baseline="zzz")


def test_metric_key_accepts_every_spelling_of_at():
    assert metric_key("best/R@1") == metric_key("best/R1") == metric_key("best/R_1")
    assert metric_key("best/R@10") != metric_key("best/R@1")


def _sensitivity_runs(rows: dict[str, tuple[str, str]], make) -> None:
    """Two seeds per row; every metric of row i and seed s is 10 * i + s."""
    for index, (row, (sim_thr, vl_coef)) in enumerate(rows.items()):
        for seed in (1, 2):
            best = {name: 10.0 * index + seed for name in ("R@1", "R@5", "R@10", "R@100", "SumR")}
            make(row=row, seed=seed, best=best,
                 params={"model.sim_thr": sim_thr, "model.vl_coef": vl_coef, "train.seed": str(seed)})


@pytest.fixture(scope="module")
def sensitivity_store(tmp_path_factory):
    """Two factors around a shared `default` row (sim_thr 0.8, vl_coef 0.1), two seeds each."""
    client = new_store(tmp_path_factory.mktemp("mlflow"))
    experiment_id, parent = start_parent(client, "sensitivity", "sensitivity")
    rows = {"sim_thr__0.9": ("0.9", "0.1"), "default": ("0.8", "0.1"), "sim_thr__0.6": ("0.6", "0.1"),
            "vl_coef__0.5": ("0.8", "0.5")}
    _sensitivity_runs(rows, lambda **kw: log_trial(client, experiment_id, parent, **kw))
    return client.tracking_uri, client, parent


def test_sensitivity_table_groups_by_factor_one_row_per_value(sensitivity_store, tmp_path):
    uri, client, parent = sensitivity_store
    records = collect_runs(client, "sensitivity", parent)
    assert table_kind(records) == "sensitivity"
    table = sensitivity_table(records, lambda run_id: None, resamples=10)
    assert list(table["group"]) == ["sim_thr (model.sim_thr)"] * 3 + ["vl_coef (model.vl_coef)"] * 2
    assert list(table["row"]) == ["sim_thr__0.6", "default", "sim_thr__0.9", "default", "vl_coef__0.5"]
    assert list(table["label"]) == ["0.6", "0.8", "0.9", "0.1", "0.5"]
    assert list(table["is_baseline"]) == [False, True, False, True, False]
    assert table["SumR_mean"].tolist() == pytest.approx([21.5, 11.5, 1.5, 11.5, 31.5])
    assert table["delta_SumR"].tolist() == pytest.approx([10.0, 0.0, -10.0, 0.0, 20.0])
    write_report("sensitivity", tmp_path, tracking_uri=uri, parent_run_id=parent, resamples=10)
    latex = (tmp_path / "results.tex").read_text()
    assert latex.count("\\midrule") == 2  # under the header and between the two factors
    assert (tmp_path / "sumr_by_factor.png").stat().st_size > 0


def test_sensitivity_without_default_row_compares_with_the_most_common_value():
    records = []
    rows = {"sim_thr__0.9": ("0.9", "0.1"), "sim_thr__0.8": ("0.8", "0.1"), "vl_coef__0.1": ("0.8", "0.1"),
            "vl_coef__0.5": ("0.8", "0.5"), "vl_coef__0.2": ("0.8", "0.2")}
    _sensitivity_runs(rows, lambda **kw: records.append(_record(**kw)))
    table = sensitivity_table(records, lambda run_id: None, resamples=10)
    assert list(table["row"]) == ["sim_thr__0.8", "sim_thr__0.9", "vl_coef__0.1", "vl_coef__0.2", "vl_coef__0.5"]
    assert list(table["is_baseline"]) == [True, False, True, False, False]
    assert table["delta_SumR"].tolist() == pytest.approx([0.0, -10.0, 0.0, 20.0, 10.0])


def test_rkd_pairs_show_distance_then_angle():
    best = {name: 1.0 for name in ("R@1", "R@5", "R@10", "R@100", "SumR")}
    pairs = {"default": ("15.0", "30.0"), "rkd__5_10": ("5.0", "10.0"), "rkd__20_40": ("20.0", "40.0")}
    records = [_record(row, 0, best, {"model.rkd_d_coef": d, "model.rkd_a_coef": a}) for row, (d, a) in pairs.items()]
    table = sensitivity_table(records, lambda run_id: None, resamples=10)
    assert table["group"].tolist() == ["rkd (model.rkd_d_coef:model.rkd_a_coef)"] * 3
    assert table["label"].tolist() == ["5.0:10.0", "15.0:30.0", "20.0:40.0"]


def _record(row: str, seed: int, best: dict, params: dict) -> RunRecord:
    return RunRecord(run_id=f"{row}-{seed}", run_name=row, status="FINISHED", start_time=0, parent_run_id="p",
                     row=row, seed=seed, trial_id=None, params=params,
                     metrics={metric_key(f"best/{name}"): value for name, value in best.items()})


def test_plain_sweep_has_one_row_per_trial(tmp_path):
    client = new_store(tmp_path)
    experiment_id, parent = start_parent(client, "sweep", "sweep")
    for trial, (lr, sumr) in enumerate([("1e-4", 90.0), ("3e-4", 120.0), ("1e-3", 60.0)]):
        log_trial(client, experiment_id, parent, trial_id=f"t{trial}", params={"train.lr": lr, "train.seed": "0"},
                  best={"R@1": 1.0, "R@5": 2.0, "R@10": 3.0, "R@100": 4.0, "SumR": sumr})
    records = collect_runs(client, "sweep")
    assert table_kind(records) == "sweep"
    table = sweep_table(records)
    assert list(table["trial"]) == ["t1", "t0", "t2"] and list(table["train.lr"]) == ["3e-4", "1e-4", "1e-3"]
    result = write_report("sweep", tmp_path / "out", tracking_uri=client.tracking_uri)
    assert result.kind == "sweep" and (tmp_path / "out" / "sumr_by_param.png").stat().st_size > 0
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| Trial | train.lr |" in markdown and "**120.0**" in markdown
    assert "importances skipped: 3 complete trials" in markdown


def test_paper_sumr_column_only_for_qvhighlights():
    best = {name: 1.0 for name in ("R@1", "R@5", "R@10", "R@100", "SumR")}
    records = [_record(row, 0, best, {"data.collection": "qvhighlight"}) for row in ("a_baseline", "e_adaptive")]
    table = ablation_table(records, lambda run_id: None, resamples=10)
    assert table["paper_SumR"].tolist() == [225.5, 234.6]
    assert to_markdown(main_display(table, "ablation", 10)).splitlines()[0].endswith("| p | paper SumR |")
    synthetic = [_record(r.row, 0, best, {"data.collection": "synthetic"}) for r in records]
    assert "paper_SumR" not in ablation_table(synthetic, lambda run_id: None, resamples=10).columns
