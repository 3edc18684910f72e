"""The four paper configs inherit paper_base.yaml and resolve to every value the paper states."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from msc_platform.run.config import ExperimentConfig, flatten, load_config

CONFIG_DIR = Path(__file__).resolve().parents[3] / "experiments" / "configs"
DATASETS = ("tvr", "activitynet", "charades", "qvhighlight")

SHARED = {  # the paper's settings common to all four datasets, and the platform's for them
    "data.num_workers": 4,
    "model.hidden": 384, "model.heads": 4, "model.clip_tokens": "optome", "model.tcp": True,
    "model.cbva": "adaptive", "model.rkd_d_coef": 15.0, "model.rkd_a_coef": 30.0,
    "model.vl_coef": 0.1, "model.nce_frame": 0.04, "model.hard_pool": 20,
    "model.hard_negative_start": 20,
    "train.batch_size": 128, "train.epochs": 100, "train.weight_decay": 0.01, "train.warmup": 0.01,
    "train.patience": 10, "train.seed": 9527, "train.device": "auto", "train.bf16": False,
}
ROWS = {  # the paper's per-dataset table (lr, dropout, margin, sft_factor, nce_clip, sim_thr)
    # plus each dataset's feature widths and MLflow experiment
    "tvr": {"train.lr": 3e-4, "model.dropout": 0.2, "model.margin": 0.1,
            "model.sft_factor": 0.09, "model.nce_clip": 0.05, "model.sim_thr": 0.8,
            "model.text_dim": 768, "model.video_dim": 768},
    "activitynet": {"train.lr": 2.5e-4, "model.dropout": 0.31, "model.margin": 0.2,
                    "model.sft_factor": 0.6, "model.nce_clip": 0.02, "model.sim_thr": 0.8,
                    "model.text_dim": 768, "model.video_dim": 768},
    "charades": {"train.lr": 2e-4, "model.dropout": 0.25, "model.margin": 0.2,
                 "model.sft_factor": 0.6, "model.nce_clip": 0.02, "model.sim_thr": 0.85,
                 "model.text_dim": 768, "model.video_dim": 768},
    "qvhighlight": {"train.lr": 2.5e-4, "model.dropout": 0.31, "model.margin": 0.2,
                    "model.sft_factor": 0.6, "model.nce_clip": 0.02, "model.sim_thr": 0.7,
                    "model.text_dim": 512, "model.video_dim": 2816},
}


def _expected(name: str) -> dict:
    """Every resolved value: defaults, then the shared settings, then the dataset's own."""
    expected = {**flatten(ExperimentConfig()), **SHARED, **ROWS[name]}
    expected.update({"data.collection": name, "tracking.experiment": f"msc-{name}"})
    return expected


def _dotted(path: Path) -> dict:
    """The keys a YAML config file sets itself (not through its base), dotted."""
    data = yaml.safe_load(path.read_text())
    data.pop("base", None)
    return {f"{section}.{key}": value for section, values in data.items()
            for key, value in values.items()}


@pytest.mark.parametrize("name", DATASETS)
def test_a_paper_config_resolves_to_every_value_of_the_paper(name):
    resolved = flatten(load_config(CONFIG_DIR / f"{name}.yaml"))
    expected = _expected(name)
    assert Path(resolved.pop("data.root")).name == "data" and expected.pop("data.root") == "data"
    assert resolved == expected


@pytest.mark.parametrize("name", DATASETS)
def test_a_paper_config_keeps_only_what_differs_from_its_base(name):
    assert "base: paper_base.yaml" in (CONFIG_DIR / f"{name}.yaml").read_text()
    own = _dotted(CONFIG_DIR / f"{name}.yaml")
    shared = _dotted(CONFIG_DIR / "paper_base.yaml")
    assert not set(own) & set(shared)
    for key in own:  # a key the four files would all set to one value belongs in the base
        assert len({_dotted(CONFIG_DIR / f"{other}.yaml")[key] for other in DATASETS}) > 1, key


def test_the_base_holds_exactly_the_shared_settings():
    shared = _dotted(CONFIG_DIR / "paper_base.yaml")
    assert {key: value for key, value in shared.items() if key != "data.root"} == SHARED
