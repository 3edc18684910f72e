"""The `msc` console command: one sub-command family per module.

Each module in COMMAND_MODULES exposes `register(subparsers)`, which adds its sub-commands
and sets `func` on their parsers; `func(args)` returns the exit code. Only the module of the
sub-command being run is imported (Ray, MLflow and torch are slow to import), except for
`msc --help` or an unknown command, where every module registers so the listing is complete.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = {
    "data": "msc_platform.commands.data",
    "train": "msc_platform.commands.train",
    "eval": "msc_platform.commands.train",
    "export": "msc_platform.commands.train",
    "sweep": "msc_platform.commands.sweep",
    "tables": "msc_platform.commands.tables",
    "ablation": "msc_platform.commands.tables",
}


def _modules_for(argv: list[str]) -> list[str]:
    """The command modules needed to parse `argv`: the chosen command's, or all of them."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    if first in COMMAND_MODULES:
        return [COMMAND_MODULES[first]]
    return list(dict.fromkeys(COMMAND_MODULES.values()))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser with the sub-commands that `argv` needs (all when None)."""
    parser = argparse.ArgumentParser(prog="msc", description="Train, sweep and ablate MSC.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    names = _modules_for(argv) if argv is not None else list(dict.fromkeys(COMMAND_MODULES.values()))
    for name in names:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: the process arguments) and run the chosen sub-command."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
