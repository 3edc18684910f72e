"""Shipped sweep specs and config files share their common settings through `base:` files and
keep only what differs; the resolved specs keep their values."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from msc_platform.run.config import deep_merge, read_yaml
from msc_platform.sweeps.spec import load_sweep_spec

EXPERIMENTS = Path(__file__).resolve().parents[3] / "experiments"
SHARED = EXPERIMENTS / "sweeps" / "shared"
PAPER_SWEEPS = ("tvr", "activitynet", "charades", "qvhighlight")
SYNTHETIC_SPECS = (EXPERIMENTS / "sweeps" / "default.yaml",
                   EXPERIMENTS / "ablations" / "components.yaml",
                   EXPERIMENTS / "ablations" / "sensitivity.yaml")
SYNTHETIC_OVERRIDES = {"train.epochs": 3, "train.patience": 3, "train.device": "cpu",
                       "train.progress": False, "tracking.log_checkpoint": False}
WITH_A_BASE = sorted(path for folder in ("configs", "sweeps", "ablations")
                     for path in (EXPERIMENTS / folder).rglob("*.yaml")
                     if "base" in (yaml.safe_load(path.read_text()) or {}))


def _bases(path: Path) -> list[str]:
    base = yaml.safe_load(path.read_text())["base"]
    return base if isinstance(base, list) else [base]


def _merged_bases(path: Path) -> dict:
    """What the file's `base:` files give, merged as the loader merges them."""
    merged: dict = {}
    for name in _bases(path):
        merged = deep_merge(merged, read_yaml((path.parent / name).resolve()))
    return merged


def _own(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data.pop("base")
    return data


@pytest.mark.parametrize("path", WITH_A_BASE, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_file_with_a_base_sets_no_value_its_base_already_has(path):
    base = _merged_bases(path)
    for key, value in _own(path).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            repeated = {k for k, v in value.items() if k in base[key] and base[key][k] == v}
            assert not repeated, f"{path.name}: {key}: {sorted(repeated)} repeat the base"
        else:
            assert base.get(key, object()) != value, f"{path.name}: {key} repeats the base"


def test_every_kind_of_shipped_file_shares_through_a_base():
    names = {f"{p.parent.name}/{p.stem}" for p in WITH_A_BASE}
    assert {f"configs/{name}" for name in PAPER_SWEEPS} <= names
    assert {f"sweeps/{name}" for name in PAPER_SWEEPS} <= names
    assert {"sweeps/default", "ablations/components", "ablations/sensitivity"} <= names


def test_the_paper_sweeps_differ_only_in_name_and_base_config():
    specs = {name: load_sweep_spec(EXPERIMENTS / "sweeps" / f"{name}.yaml") for name in PAPER_SWEEPS}
    for name, spec in specs.items():
        assert _own(EXPERIMENTS / "sweeps" / f"{name}.yaml") == {
            "name": name, "base_config": f"../configs/{name}.yaml"}
        assert spec.name == name and spec.base_config == EXPERIMENTS / "configs" / f"{name}.yaml"
        assert spec.overrides == {"train.epochs": 40, "train.progress": False,
                                  "tracking.log_checkpoint": True}
        assert (spec.num_samples, spec.max_concurrent_trials, spec.max_failures) == (48, 8, 3)
        assert (spec.cpus_per_trial, spec.gpus_per_trial) == (4, 0.5)
        assert (spec.scheduler.type, spec.scheduler.grace_period,
                spec.scheduler.reduction_factor) == ("asha", 5, 3)
        assert spec.space == specs["tvr"].space and spec.seed == 0


@pytest.mark.parametrize("path", SYNTHETIC_SPECS, ids=lambda p: p.stem)
def test_the_synthetic_specs_share_one_overrides_block(path):
    spec = load_sweep_spec(path)
    assert spec.base_config == EXPERIMENTS / "configs" / "synthetic.yaml"
    assert {key: spec.overrides[key] for key in SYNTHETIC_OVERRIDES} == SYNTHETIC_OVERRIDES
    assert (spec.max_concurrent_trials, spec.cpus_per_trial, spec.gpus_per_trial) == (2, 1, 0)
    assert (spec.metric, spec.mode) == ("SumR", "max")
    own = _own(path).get("overrides", {})
    assert not set(own) & set(SYNTHETIC_OVERRIDES)
    assert _bases(path)[0].endswith("shared/synthetic_cpu.yaml")


def test_the_component_grids_share_their_rows_and_the_search_sweeps_their_space():
    grids = [load_sweep_spec(EXPERIMENTS / "ablations" / f"{name}.yaml")
             for name in ("components", "components_qvhighlight")]
    assert grids[0].rows == grids[1].rows and list(grids[0].rows) == [
        "a_baseline", "b_tcp", "c_cbva_uniform", "d_optome", "e_adaptive"]
    assert all("rows" not in _own(EXPERIMENTS / "ablations" / f"{name}.yaml")
               for name in ("components", "components_qvhighlight"))
    spaces = [load_sweep_spec(EXPERIMENTS / "sweeps" / f"{name}.yaml").space
              for name in ("default", "tvr")]
    assert spaces[0] == spaces[1] and len(spaces[0]) == 7


def test_the_sensitivity_grid_adds_the_full_model_to_the_shared_overrides():
    spec = load_sweep_spec(EXPERIMENTS / "ablations" / "sensitivity.yaml")
    assert spec.overrides == {**SYNTHETIC_OVERRIDES, "model.tcp": True, "model.cbva": "adaptive",
                              "model.clip_tokens": "optome", "model.sim_thr": 0.8,
                              "model.rkd_d_coef": 15.0, "model.rkd_a_coef": 30.0,
                              "model.vl_coef": 0.1}
    assert len(spec.rows) == 12 and spec.seeds == [0, 1, 2]
