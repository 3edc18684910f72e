"""Sweep specs: every shipped spec loads and builds its Tune objects; bad specs fail clearly, early."""
from __future__ import annotations

from pathlib import Path

import pytest
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from msc_platform.cli import main as msc_main
from msc_platform.sweep import param_space, tune_config
from msc_platform.sweep_spec import SweepSpecError, load_sweep_spec, trial_config, trial_overrides
from msc_platform.sweep_tracking import absolute_tracking_uri

REPO_ROOT = Path(__file__).resolve().parents[2]
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
    assert not config.reuse_actors  # ASHA's stops cannot hand a worker over cleanly
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
    (SEARCH + "colour: red\n", "colour", "unknown key"),
    ("space:\n  model.sim_thr: {uniform: [0.5, 1.2]}\n", "space.model.sim_thr", "sim_thr"),
    ("space:\n  model.sim_thr: {normal: [0.5, 0.9]}\n", "space.model.sim_thr", "unknown distribution"),
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
    (SEARCH + "scheduler: {type: hyperband}\n", "scheduler.type", "expected one of"),
    (SEARCH + "mode: maximum\n", "mode", "expected 'max' or 'min'"),
    (SEARCH + "reuse_actors: maybe\n", "reuse_actors", "expected true or false"),
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
    with pytest.raises(SweepSpecError, match=r"spec.yaml: base_config: .*train.epochs"):
        load_sweep_spec(write_spec(tmp_path, SEARCH), ["train.epochs=zero"])


def test_msc_sweep_rejects_a_bad_spec_before_starting_ray(tmp_path, capsys):
    path = write_spec(tmp_path, SEARCH + "num_samples: -1\n")
    assert msc_main(["sweep", str(path)]) == 2
    assert "num_samples: must be >= 1" in capsys.readouterr().err


def test_relative_sqlite_tracking_uri_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
