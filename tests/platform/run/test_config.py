"""Config loading: shipped configs, overrides, flatten round trip and clear errors."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from model.network import MSC
from msc_platform.run.config import (
    DATA_ROOT_ENV,
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    flatten,
    load_config,
    read_yaml,
    resolve_data_root,
    to_yaml,
)

CONFIG_DIR = Path(__file__).resolve().parents[3] / "experiments" / "configs"
SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))
PAPER = {  # docs/model.md, Paper settings: lr, dropout, margin, sft_factor, nce weights, sim_thr
    "tvr": (3e-4, 0.2, 0.1, 0.09, 0.05, 0.04, 0.8),
    "activitynet": (2.5e-4, 0.31, 0.2, 0.6, 0.02, 0.04, 0.8),
    "charades": (2e-4, 0.25, 0.2, 0.6, 0.02, 0.04, 0.85),
    "qvhighlight": (2.5e-4, 0.31, 0.2, 0.6, 0.02, 0.04, 0.7),
}


RELEASED_CLI_DEFAULTS = {  # main.py's argparse defaults in the released code (admins97/MSC_PRVR),
    # which its README command `python main.py -d <dataset>` applies over every dataset's file
    "sim_thr": 0.5, "rkd_d_coef": 10.0, "rkd_a_coef": 20.0, "vl_coef": 0.1,
}

RELEASED_DATASET_FILES = {  # the released code's Configs/{tvr,act,cha,qvhighlight}.py:
    # lr, drop (= input_drop), margin, sft_factor, loss_factor[0], loss_factor[1]
    "tvr": (3e-4, 0.2, 0.1, 0.09, 0.05, 0.04),
    "activitynet": (2.5e-4, 0.31, 0.2, 0.6, 0.02, 0.04),
    "charades": (2e-4, 0.25, 0.2, 0.6, 0.02, 0.04),
    "qvhighlight": (2.5e-4, 0.31, 0.2, 0.6, 0.02, 0.04),
}
# the same in all four files: batchsize, n_epoch, max_es_cnt, wd, lr_warmup_proportion, seed,
# hard_pool_size, hard_negative_start_epoch, clip_scale_w, frame_scale_w
RELEASED_SHARED = (128, 100, 10, 0.01, 0.01, 9527, 20, 20, 0.4, 0.6)


def test_the_paper_configs_their_base_their_released_siblings_and_synthetic_ship():
    released = {f"{name}_released" for name in PAPER}
    assert {p.stem for p in SHIPPED} == set(PAPER) | released | {"synthetic", "paper_base"}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_released_siblings_differ_from_the_paper_only_in_the_released_command_values(name):
    paper = load_config(CONFIG_DIR / f"{name}.yaml")
    released = load_config(CONFIG_DIR / f"{name}_released.yaml")
    wanted = {key: getattr(released.model, key) for key in RELEASED_CLI_DEFAULTS}
    assert wanted == RELEASED_CLI_DEFAULTS
    assert released.train == paper.train and released.data == paper.data
    assert released.tracking == paper.tracking
    differing = {f.name for f in dataclasses.fields(paper.model)
                 if getattr(paper.model, f.name) != getattr(released.model, f.name)}
    assert differing == {"sim_thr", "rkd_d_coef", "rkd_a_coef"}
    assert "base: " + f"{name}.yaml" in (CONFIG_DIR / f"{name}_released.yaml").read_text()


@pytest.mark.parametrize("name", sorted(PAPER))
def test_released_siblings_carry_the_released_per_dataset_values(name):
    cfg = load_config(CONFIG_DIR / f"{name}_released.yaml")
    m, t = cfg.model, cfg.train
    assert (t.lr, m.dropout, m.margin, m.sft_factor, m.nce_clip, m.nce_frame) == RELEASED_DATASET_FILES[name]
    assert (t.batch_size, t.epochs, t.patience, t.weight_decay, t.warmup, t.seed, m.hard_pool,
            m.hard_negative_start, m.clip_weight, m.frame_weight) == RELEASED_SHARED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_config_loads_and_builds_a_model(path):
    cfg = load_config(path)
    model = MSC(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert Path(cfg.data.root).is_absolute()


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_match_the_spec_table(name):
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    m, t = cfg.model, cfg.train
    assert (t.lr, m.dropout, m.margin, m.sft_factor, m.nce_clip, m.nce_frame, m.sim_thr) == PAPER[name]
    assert (m.hidden, m.heads, t.batch_size, t.epochs, t.patience, t.seed) == (384, 4, 128, 100, 10, 9527)
    assert (m.rkd_d_coef, m.rkd_a_coef, m.vl_coef, m.hard_pool, m.hard_negative_start) == (15, 30, 0.1, 20, 20)
    dims = (512, 2816) if name == "qvhighlight" else (768, 768)
    assert (m.text_dim, m.video_dim) == dims


def test_overrides_are_typed():
    cfg = load_config(CONFIG_DIR / "tvr.yaml",
                      ["model.sim_thr=0.7", "train.lr=1e-4", "model.tcp=false", "model.cbva=fixed",
                       "tracking.run_name=abc", "model.gauss_widths=[null, 0.5]"])
    assert cfg.model.sim_thr == 0.7 and cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.tcp is False and cfg.model.cbva == "fixed"
    assert cfg.tracking.run_name == "abc" and cfg.model.gauss_widths == (None, 0.5)


def test_flatten_round_trips_through_apply_overrides():
    base = ExperimentConfig()
    changed = apply_overrides(base, {"model.rkd_d_coef": 10.0, "train.epochs": 3,
                                     "model.gauss_widths": [None, 2.0]})
    flat = flatten(changed)
    assert flat["model.rkd_d_coef"] == 10.0 and flat["train.epochs"] == 3
    assert all(isinstance(v, (int, float, str, bool, type(None))) for v in flat.values())
    assert apply_overrides(base, flat) == changed
    assert base.model.rkd_d_coef == 15.0, "apply_overrides must not change its input"


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "train.lr: expected float, got 'abc'"),
    ("train.epochs=2.5", "train.epochs: expected int, got 2.5"),
    ("model.tcp=maybe", "model.tcp: expected true or false, got 'maybe'"),
    ("model.tcp=1", "model.tcp: expected true or false, got 1"),
    ("train.epochs=true", "train.epochs: expected int, got True"),
    ("model.sim_thr=1.5", "model.sim_thr: must be <= 1.0, got 1.5"),
    ("model.cbva=sometimes", "model.cbva: expected 'off', 'fixed' or 'adaptive', got 'sometimes'"),
    ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
    ("train.device=tpu", "train.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    ("model.simthr=0.7", "model.simthr: unknown key (known: text_dim, video_dim, hidden,"),
    ("optim.lr=1", "optim.lr: unknown key (expected '<section>.<field>'"),
    ("model.gauss_widths=[null, -1]", "model.gauss_widths[1]: must be > 0.0, got -1"),
    ("model.gauss_widths=[]", "model.gauss_widths: must not be empty, got []"),
    ("train.lr", "expected 'section.key=value'"),
])
def test_bad_overrides_name_the_key_and_problem(override, message):
    with pytest.raises(ConfigError, match="tvr.yaml") as caught:
        load_config(CONFIG_DIR / "tvr.yaml", [override])
    assert message in str(caught.value)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("train:\n  lrr: 0.1\n", "train.lrr: unknown key (known: batch_size, epochs, lr,"),
    ("optimizer:\n  lr: 0.1\n", "optimizer: unknown key (known: data, model, train, tracking)"),
    ("train:\n  lr: fast\n", "train.lr: expected float, got 'fast'"),
    ("model:\n  dropout: 1.0\n", "model.dropout: must be < 1.0, got 1.0"),
    ("train: [1, 2]\n", "train: expected a mapping, got [1, 2]"),
    ("model:\n  tcp: 'yes'\n", "model.tcp: expected true or false, got 'yes'"),
    ("tracking:\n  run_name: 7\n", "tracking.run_name: expected str, got 7"),
    ("model:\n  hidden: 384\n  heads: 5\n", "model.heads: must divide hidden (384)"),
    ("data:\n  synthetic_preset: huge\n", "data.synthetic_preset: expected 'tiny' or 'small'"),
    ("train:\n  lr: [\n", "not valid YAML"),
    ("- 1\n", "expected a mapping"),
])
def test_bad_files_name_the_file_key_and_problem(tmp_path, text, message):
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match="bad.yaml") as caught:
        load_config(path)
    assert message in str(caught.value)


def test_every_bad_field_is_listed_one_line_each(tmp_path):
    path = _write(tmp_path / "bad.yaml", "model:\n  sim_thr: 1.5\n  cbva: sometimes\n"
                  "  gauss_widths: [null, 0.0]\ntrain:\n  lr: -1.0\n  epochs: 2.5\n  colour: red\n"
                  "tracking:\n  experiment: ''\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["train.batch_size=0", "data.num_workers=-1"])
    assert str(caught.value).splitlines() == [f"{path}: {line}" for line in (
        "model.gauss_widths[1]: must be > 0.0, got 0.0",
        "model.cbva: expected 'off', 'fixed' or 'adaptive', got 'sometimes'",
        "model.sim_thr: must be <= 1.0, got 1.5",
        "train.epochs: expected int, got 2.5",
        "train.lr: must be > 0.0, got -1.0",
        "train.colour: unknown key (known: batch_size, epochs, lr, weight_decay, warmup, patience, "
        "seed, device, bf16, compile, compile_backend, log_every, num_threads, deterministic, "
        "eval_query_chunk, eval_video_batch, progress, init_from)",
        "tracking.experiment: must not be empty, got ''")]
    assert [(key, problem.split(",")[0]) for key, problem in caught.value.problems][:2] == [
        ("model.gauss_widths[1]", "must be > 0.0"), ("model.cbva", "expected 'off'")]
    good = _write(tmp_path / "good.yaml", "train:\n  lr: 1.0e-3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(good, ["train.batch_size=0", "data.num_workers=-1", "model.tcp=2"])
    assert str(caught.value).splitlines() == [f"{good} (overrides): {line}" for line in (
        "data.num_workers: must be >= 0, got -1", "model.tcp: expected true or false, got 2",
        "train.batch_size: must be >= 1, got 0")]


@pytest.mark.parametrize("text, value", [
    ("3e-4", 3e-4), ("1.0e-3", 1e-3), ("2E-5", 2e-5), ("+5e-1", 0.5), (".5e-2", 0.005),
    ("1e2", 100.0), ("0.25", 0.25), ("1", 1.0),
])
def test_yaml_float_forms_load_as_floats(tmp_path, text, value):
    cfg = load_config(_write(tmp_path / "c.yaml", f"train:\n  lr: {text}\n"))
    assert cfg.train.lr == value and type(cfg.train.lr) is float
    assert load_config(CONFIG_DIR / "tvr.yaml", [f"train.lr={text}"]).train.lr == value


def test_lists_become_tuples_and_null_keeps_optional_fields_empty(tmp_path):
    path = _write(tmp_path / "c.yaml", "model:\n  gauss_widths: [null, 2, 0.5]\n"
                  "  input_dropout: null\n  dropout: 0\ntracking:\n  run_name: null\n"
                  "data:\ntrain:\n  init_from: null\n")
    cfg = load_config(path)
    assert cfg.model.gauss_widths == (None, 2.0, 0.5) and type(cfg.model.gauss_widths[1]) is float
    assert cfg.model.input_dropout is None and cfg.tracking.run_name is None
    assert cfg.model.dropout == 0.0 and type(cfg.model.dropout) is float
    assert dataclasses.replace(cfg.data, root="data") == ExperimentConfig().data  # `data:` empty
    assert cfg.train.init_from is None


def test_yaml_own_booleans_are_booleans_but_nothing_else_is(tmp_path):
    assert load_config(_write(tmp_path / "a.yaml", "model:\n  tcp: no\n")).model.tcp is False
    with pytest.raises(ConfigError, match="model.tcp: expected true or false, got 0"):
        load_config(_write(tmp_path / "b.yaml", "model:\n  tcp: 0\n"))


def test_override_text_is_coerced_by_the_field_type():
    cfg = load_config(CONFIG_DIR / "tvr.yaml", [
        "train.lr=1e-4", "model.tcp=false", "model.gauss_widths=[null,0.5]", "model.cbva=off",
        "tracking.run_name=123", "train.epochs=7", "model.dropout=0", "tracking.uri=null"])
    assert cfg.train.lr == 1e-4 and type(cfg.train.lr) is float
    assert cfg.model.tcp is False and cfg.model.gauss_widths == (None, 0.5)
    assert cfg.model.cbva == "off" and cfg.tracking.run_name == "123"
    assert cfg.train.epochs == 7 and type(cfg.model.dropout) is float and cfg.tracking.uri is None
    typed = apply_overrides(ExperimentConfig(), {"model.gauss_widths": "[null, 2.0]",
                                                 "model.cbva": "off", "train.lr": 1})
    assert typed.model.gauss_widths == (None, 2.0) and typed.model.cbva == "off"
    assert type(typed.train.lr) is float
    with pytest.raises(ConfigError, match="model.cbva: expected 'off', 'fixed' or 'adaptive', "
                                          "got False"):
        apply_overrides(ExperimentConfig(), {"model.cbva": False})


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_base_chain_merges_and_detects_cycles(tmp_path):
    _write(tmp_path / "parent.yaml", "model:\n  hidden: 64\n  heads: 2\ntrain:\n  lr: 1.0e-3\n")
    child = _write(tmp_path / "child.yaml", "base: parent.yaml\ntrain:\n  lr: 2e-3\n")
    cfg = load_config(child)
    assert (cfg.model.hidden, cfg.model.heads, cfg.train.lr) == (64, 2, 2e-3)
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_data_root_precedence(tmp_path, monkeypatch):
    path = _write(tmp_path / "c.yaml", "data:\n  root: from_config\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert load_config(path).data.root == str(tmp_path / "from_config")
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "from_env"))
    assert load_config(path).data.root == str(tmp_path / "from_env")
    assert load_config(path, data_root="from_cli").data.root == str(tmp_path / "from_cli")
    assert resolve_data_root(ExperimentConfig(), "x") == tmp_path / "x"


def test_resolved_yaml_loads_back(tmp_path):
    cfg = load_config(CONFIG_DIR / "qvhighlight.yaml", ["model.cbva=off"])
    path = _write(tmp_path / "resolved.yaml", to_yaml(cfg))
    assert load_config(path) == cfg


def test_a_list_of_bases_merges_left_to_right_under_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {epochs: 5, lr: 0.1}\nmodel: {tcp: false}\n")
    (tmp_path / "b.yaml").write_text("train: {epochs: 7}\n")
    (tmp_path / "top.yaml").write_text("base: [a.yaml, b.yaml]\nmodel: {tcp: true}\n")
    assert read_yaml(tmp_path / "top.yaml") == {"train": {"epochs": 7, "lr": 0.1},
                                                "model": {"tcp": True}}
    (tmp_path / "bad.yaml").write_text("base: [a.yaml, 3]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: base: expected a file name or a list"):
        read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("base: [a.yaml, loop.yaml]\n")
    with pytest.raises(ConfigError, match="circular reference"):
        read_yaml(tmp_path / "loop.yaml")
