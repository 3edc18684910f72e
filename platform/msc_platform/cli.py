"""The `msc` console command: one sub-command family per module.

Each module listed in COMMAND_MODULES exposes `register(subparsers)`, which adds its
sub-commands and sets `func` on their parsers; `func(args)` returns the exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "msc_platform.commands.data",
    "msc_platform.commands.train",
    "msc_platform.commands.sweep",
    "msc_platform.commands.tables",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(prog="msc", description="Train, sweep and ablate MSC.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen sub-command; returns its exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
