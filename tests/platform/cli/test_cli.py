"""The `msc` command lists every sub-command, imports only the one it runs, and takes `key=value`
overrides anywhere among the options."""
from __future__ import annotations

import subprocess
import sys

import pytest

from msc_platform.cli.main import COMMAND_MODULES, build_parser, parse_command_line


def test_help_lists_every_command():
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no public view
    assert set(choices) == set(COMMAND_MODULES)


def test_data_command_does_not_import_ray_or_mlflow():
    code = ("import sys; from msc_platform.cli.main import build_parser; "
            "build_parser(['data', 'validate', 'x']); "
            "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit) as err:
        build_parser(["nope"]).parse_args(["nope"])
    assert err.value.code == 2


@pytest.mark.parametrize("argv", [
    ["sweep", "s.yaml", "num_samples=2", "train.epochs=1", "--storage", "/t", "data.root=/d"],
    ["sweep", "s.yaml", "--address", "h:1", "--storage", "/t", "num_samples=2", "train.epochs=1",
     "--quiet", "data.root=/d"],
    ["sweep", "s.yaml", "--storage=/t", "num_samples=2", "--address", "h:1", "train.epochs=1",
     "data.root=/d"],
])
def test_overrides_and_options_come_in_any_order(argv):
    args = parse_command_line(build_parser(argv), argv)
    assert args.spec == "s.yaml" and args.storage == "/t"
    assert args.overrides == ["num_samples=2", "train.epochs=1", "data.root=/d"]


def test_ablation_and_train_take_overrides_after_options_too():
    argv = ["ablation", "g.yaml", "--address", "h:1", "seeds=[0]", "--out", "o", "train.epochs=1"]
    assert parse_command_line(build_parser(argv), argv).overrides == ["seeds=[0]", "train.epochs=1"]
    argv = ["train", "--config", "c.yaml", "train.epochs=1", "--out", "o", "model.hidden=32"]
    assert parse_command_line(build_parser(argv), argv).overrides == ["train.epochs=1", "model.hidden=32"]


@pytest.mark.parametrize("argv, message", [
    (["sweep", "s.yaml", "a=1", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["data", "validate", "root", "a=1"], "data takes no key=value overrides: a=1"),
])
def test_unknown_options_and_stray_overrides_exit_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        parse_command_line(build_parser(argv), argv)
    assert err.value.code == 2 and message in capsys.readouterr().err
