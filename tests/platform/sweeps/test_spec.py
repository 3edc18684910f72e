"""Sweep specs: every shipped spec loads and builds its Tune objects; bad specs fail clearly, early."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from msc_platform.cli.main import main as msc_main
from msc_platform.sweeps.records import absolute_tracking_uri
from msc_platform.sweeps.runner import param_space, tune_config
from msc_platform.sweeps.spec import (
    SWEEP_METRICS,
    SweepSpecError,
    load_sweep_spec,
    trial_config,
    trial_overrides,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
SWEEPS = sorted((REPO_ROOT / "experiments" / "sweeps").glob("*.yaml"))
BASE = REPO_ROOT / "experiments" / "configs" / "synthetic.yaml"
PAPER_KEYS = {"model.rkd_d_coef", "model.rkd_a_coef", "model.sim_thr", "model.vl_coef",
              "model.tcp", "model.cbva", "model.clip_tokens"}


def write_spec(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: t\nbase_config: {BASE}\n" + body)
    return path


SEARCH = "space:\n  model.sim_thr: {uniform: [0.6, 0.9]}\n"
GRID = "rows:\n  a: {model.tcp: false}\n  b: {model.cbva: fixed}\nseeds: [3, 4]\n"


def test_shipped_specs_cover_default_and_every_paper_dataset():
    names = {path.stem for path in SWEEPS}
    assert {"default", "tvr", "activitynet", "charades", "qvhighlight"} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_shipped_spec_builds_searcher_scheduler_and_space(path):
    spec = load_sweep_spec(path)
    config = tune_config(spec)
    assert set(spec.space) == PAPER_KEYS
    assert isinstance(config.search_alg, OptunaSearch)
    assert isinstance(config.scheduler, ASHAScheduler)
    assert config.metric == "SumR" and config.mode == "max"
    assert config.max_concurrent_trials == spec.max_concurrent_trials
    assert config.reuse_actors  # a stopped worker makes no MLflow call: its process is reused
    space = param_space(spec)
    assert isinstance(space["model.cbva"], tune.search.sample.Categorical)
    assert space["model.cbva"].categories == ["adaptive", "fixed", "off"]
    assert spec.space["model.rkd_d_coef"].kind == "loguniform"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_shipped_space_reaches_the_paper_and_the_released_values(path):
    spec = load_sweep_spec(path)

    def reaches(key: str, value: float) -> bool:
        low, high = spec.space[key].args
        return low <= value <= high

    assert reaches("model.sim_thr", 0.5) and reaches("model.sim_thr", spec.base.model.sim_thr)
    for d_coef, a_coef in ((10.0, 20.0), (15.0, 30.0)):  # released command, paper
        assert reaches("model.rkd_d_coef", d_coef) and reaches("model.rkd_a_coef", a_coef)


def test_cli_overrides_split_between_spec_and_training_config(tmp_path):
    spec = load_sweep_spec(write_spec(tmp_path, SEARCH),
                           ["num_samples=3", "scheduler.grace_period=2", "train.epochs=4"])
    assert spec.num_samples == 3 and spec.scheduler.grace_period == 2
    assert spec.base.train.epochs == 4


def test_trial_config_applies_the_drawn_values(tmp_path):
    spec = load_sweep_spec(write_spec(tmp_path, SEARCH))
    cfg = trial_config(spec, {"model.sim_thr": 0.75})
    assert cfg.model.sim_thr == 0.75
    assert spec.base.model.sim_thr == 0.8  # the base stays untouched


def test_grid_mode_is_rows_times_seeds_without_searcher(tmp_path):
    spec = load_sweep_spec(write_spec(tmp_path, GRID))
    assert spec.is_grid and spec.total_trials == 4
    config = tune_config(spec)
    assert config.search_alg is None and config.scheduler is None
    assert config.reuse_actors  # a finished trial's worker runs the next trial
    space = param_space(spec)
    assert space["row"] == {"grid_search": ["a", "b"]}
    assert space["train.seed"] == {"grid_search": [3, 4]}
    overrides = trial_overrides(spec, {"row": "b", "train.seed": 4})
    assert overrides == {"model.cbva": "fixed", "train.seed": 4}
    assert trial_config(spec, {"row": "a", "train.seed": 3}).model.tcp is False


@pytest.mark.parametrize("body, key, problem", [
    (SEARCH + "colour: red\n", "colour", "unknown key (known: base_config, name, description,"),
    ("space:\n  model.sim_thr: {uniform: [0.5, 1.2]}\n", "space.model.sim_thr", "sim_thr"),
    ("space:\n  model.sim_thr: {normal: [0.5, 0.9]}\n", "space.model.sim_thr.normal",
     "unknown key (known: uniform, loguniform, randint, choice)"),
    ("space:\n  model.sim_thr: {uniform: [0.5]}\n", "space.model.sim_thr.uniform",
     "needs at least 2 items"),
    ("space:\n  model.tcp: {choice: []}\n", "space.model.tcp.choice", "must not be empty"),
    ("space:\n  model.hidden: {randint: [8.5, 64]}\n", "space.model.hidden.randint[0]",
     "expected int, got 8.5"),
    ("space:\n  model.vl_coef: {loguniform: [0.0, 1.0]}\n", "space.model.vl_coef", "low must be > 0"),
    ("space:\n  model.sim_thr: {uniform: [0.9, 0.6]}\n", "space.model.sim_thr", "low must be < high"),
    ("space:\n  model.colour: {choice: [1, 2]}\n", "space.model.colour", "unknown key"),
    ("space:\n  model.cbva: {choice: [adaptive, off]}\n", "space.model.cbva", "False"),
    (SEARCH + GRID, "space/rows", "exactly one"),
    ("rows:\n  a: {model.tcp: false}\n", "seeds", "needs a list of seeds"),
    (GRID + "num_samples: 3\n", "num_samples", "grid mode"),
    ("rows:\n  a: {model.sim_thr: 2.0}\nseeds: [0]\n", "rows.a", "sim_thr"),
    ("rows:\n  a: {train.seed: 1}\nseeds: [0]\n", "rows.a.train.seed", "seeds come from"),
    (SEARCH + "max_concurrent_trials: 0\n", "max_concurrent_trials", "must be >= 1"),
    (SEARCH + "resources: {cpu: 1, gpu: 1.5}\n", "resources.gpu", "fraction"),
    (SEARCH + "scheduler: {type: hyperband}\n", "scheduler.type",
     "expected 'asha' or 'none', got 'hyperband'"),
    (SEARCH + "scheduler: {reduction_factor: 1}\n", "scheduler.reduction_factor",
     "must be > 1.0, got 1"),
    (SEARCH + "resources: {cpu: 0}\n", "resources.cpu", "must be > 0.0, got 0"),
    (SEARCH + "metric: sumr\n", "metric", "expected 'SumR', 'R1', 'R5', 'R10' or 'R100', got 'sumr'"),
    (SEARCH + "metric: loss\n", "metric", "expected 'SumR', 'R1', 'R5', 'R10' or 'R100', got 'loss'"),
    (SEARCH + "name: a b\n", "name", "expected a name without spaces or slashes"),
    (GRID.replace("[3, 4]", "[3, 3]"), "seeds", "duplicate seeds, got [3, 3]"),
    (SEARCH + "seeds: [1]\n", "seeds", "only grid mode"),
    (SEARCH + "overrides: {tracking.enabled: false}\n", "overrides.tracking.enabled",
     "sweeps need MLflow tracking switched on"),
    (SEARCH + "mode: maximum\n", "mode", "expected 'max' or 'min', got 'maximum'"),
    (SEARCH + "reuse_actors: maybe\n", "reuse_actors", "expected true or false, got 'maybe'"),
])
def test_bad_spec_names_file_key_and_problem(tmp_path, body, key, problem):
    path = write_spec(tmp_path, body)
    with pytest.raises(SweepSpecError) as err:
        load_sweep_spec(path)
    message = str(err.value)
    assert str(path) in message and key in message and problem in message


def test_missing_base_config_is_reported(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: t\nbase_config: nowhere.yaml\n" + SEARCH)
    with pytest.raises(SweepSpecError, match=r"base_config: file .*nowhere.yaml does not exist"):
        load_sweep_spec(path)


def test_bad_training_override_is_reported_with_the_spec(tmp_path):
    with pytest.raises(SweepSpecError,
                       match=r"spec.yaml: overrides.train.epochs: expected int, got 'zero'"):
        load_sweep_spec(write_spec(tmp_path, SEARCH), ["train.epochs=zero"])


def test_msc_sweep_rejects_a_bad_spec_before_starting_ray(tmp_path, capsys):
    path = write_spec(tmp_path, SEARCH + "num_samples: -1\n")
    assert msc_main(["sweep", str(path)]) == 2
    assert "num_samples: must be >= 1" in capsys.readouterr().err


def test_relative_sqlite_tracking_uri_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_every_bad_key_is_listed_one_line_each(tmp_path):
    path = write_spec(tmp_path, SEARCH + "mode: maximum\nmax_concurrent_trials: 0\ncolour: red\n"
                      "scheduler: {grace_period: 0}\nresources: {gpu: 1.5}\n")
    with pytest.raises(SweepSpecError) as err:
        load_sweep_spec(path, ["num_samples=-1", "metric=R@1"])
    assert str(err.value).splitlines() == [f"{path}: {line}" for line in (
        "metric: expected 'SumR', 'R1', 'R5', 'R10' or 'R100', got 'R@1'",
        "mode: expected 'max' or 'min', got 'maximum'",
        "num_samples: must be >= 1, got -1",
        "max_concurrent_trials: must be >= 1, got 0",
        "resources.gpu: a fraction must be <= 1 (or a whole number), got 1.5",
        "scheduler.grace_period: must be >= 1, got 0",
        "colour: unknown key (known: base_config, name, description, experiment, overrides, "
        "metric, mode, num_samples, max_concurrent_trials, seed, resources, max_failures, "
        "reuse_actors, storage_path, scheduler, space, rows, seeds)")]


def test_every_value_the_config_rejects_is_listed(tmp_path):
    body = ("overrides:\n  train.epochs: 0\n  model.colour: red\n"
            "rows:\n  a: {model.sim_thr: 2.0, model.cbva: sometimes}\n  b: {train.seed: 1}\n"
            "  c: {model.tcp: false}\nseeds: [0]\nnum_samples: 3\n")
    path = write_spec(tmp_path, body)
    with pytest.raises(SweepSpecError) as err:
        load_sweep_spec(path)
    assert str(err.value).splitlines() == [f"{path}: {line}" for line in (
        "num_samples: grid mode runs every row x seed once, without a scheduler",
        "rows.b.train.seed: seeds come from `seeds:`, not from a row",
        "overrides.model.colour: unknown key (known: text_dim, video_dim, hidden, heads, dropout, "
        "input_dropout, text_len, clip_len, frame_len, gauss_widths, sft_factor, clip_weight, "
        "frame_weight, clip_tokens, tcp, cbva, rkd_d_coef, rkd_a_coef, vl_coef, sim_thr, "
        "nce_clip, nce_frame, margin, hard_pool, hard_negative_start)",
        "overrides.train.epochs: must be >= 1, got 0")]
    path = write_spec(tmp_path, body.replace("  train.epochs: 0\n  model.colour: red\n", ""))
    with pytest.raises(SweepSpecError) as err:
        load_sweep_spec(path)
    lines = str(err.value).splitlines()
    assert f"{path}: rows.a.model.cbva: expected 'off', 'fixed' or 'adaptive', got 'sometimes'" in lines
    assert f"{path}: rows.a.model.sim_thr: must be <= 1.0, got 2.0" in lines
    space = ("space:\n  model.sim_thr: {uniform: [0.5, 1.2]}\n  model.cbva: {choice: [fixed, off]}\n"
             "  optim.lr: {loguniform: [1e-4, 1e-2]}\n")
    path = write_spec(tmp_path, space)
    with pytest.raises(SweepSpecError) as err:
        load_sweep_spec(path)
    assert str(err.value).splitlines() == [f"{path}: {line}" for line in (
        "space.model.sim_thr: must be <= 1.0, got 1.2",
        "space.model.cbva: expected 'off', 'fixed' or 'adaptive', got False",
        "space.optim.lr: unknown key (expected '<section>.<field>' with a section of data, model, "
        "train, tracking)")]


def test_sweep_metrics_are_reported_to_tune_and_recorded_as_best():
    from msc_platform.run.evaluate import metric_name
    from msc_platform.run.train import BEST_KEYS
    from msc_platform.sweeps.trial import REPORTED

    recorded = {metric_name(key) for key in BEST_KEYS}
    assert set(SWEEP_METRICS) == {name for name in REPORTED if name in recorded}


def test_any_sweep_metric_loads(tmp_path):
    spec = load_sweep_spec(write_spec(tmp_path, SEARCH + "metric: R10\nmode: max\n"))
    assert tune_config(spec).metric == "R10"


def test_yaml_float_forms_and_int_widening_in_specs(tmp_path):
    body = ("overrides:\n  train.lr: 3e-4\n  model.margin: 1\n"
            "space:\n  model.vl_coef: {loguniform: [1e-2, 1]}\n  model.hidden: {randint: [32, 64]}\n"
            "resources: {cpu: 2, gpu: 5e-1}\nscheduler: {reduction_factor: 3}\n")
    spec = load_sweep_spec(write_spec(tmp_path, body))
    assert spec.base.train.lr == 3e-4 and type(spec.base.model.margin) is float
    assert spec.space["model.vl_coef"].args == [0.01, 1.0]
    assert all(type(v) is float for v in spec.space["model.vl_coef"].args)
    assert spec.space["model.hidden"].args == [32, 64] and spec.space["model.hidden"].kind == "randint"
    assert (spec.cpus_per_trial, spec.gpus_per_trial) == (2.0, 0.5)
    assert spec.scheduler.reduction_factor == 3.0 and type(spec.scheduler.reduction_factor) is float


def test_spec_base_chain_shares_overrides_and_resolves_base_config_where_it_is_named(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "common.yaml").write_text(
        f"base_config: {os.path.relpath(BASE, shared)}\noverrides:\n  train.epochs: 2\n"
        "  train.progress: false\nmetric: SumR\nmax_concurrent_trials: 1\n")
    child_dir = tmp_path / "specs"
    child_dir.mkdir()
    (child_dir / "child.yaml").write_text(
        "base: ../shared/common.yaml\nname: child\noverrides:\n  train.epochs: 3\n" + GRID)
    spec = load_sweep_spec(child_dir / "child.yaml")
    assert spec.base_config == BASE and spec.max_concurrent_trials == 1 and spec.is_grid
    assert spec.overrides == {"train.epochs": 3, "train.progress": False}
    assert spec.base.train.epochs == 3 and spec.base.train.progress is False
