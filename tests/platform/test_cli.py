"""The `msc` command lists every sub-command and imports only the one it runs."""
from __future__ import annotations

import subprocess
import sys

import pytest

from msc_platform.cli import COMMAND_MODULES, build_parser


def test_help_lists_every_command():
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no public view
    assert set(choices) == set(COMMAND_MODULES)


def test_data_command_does_not_import_ray_or_mlflow():
    code = ("import sys; from msc_platform.cli import build_parser; "
            "build_parser(['data', 'validate', 'x']); "
            "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit) as err:
        build_parser(["nope"]).parse_args(["nope"])
    assert err.value.code == 2
