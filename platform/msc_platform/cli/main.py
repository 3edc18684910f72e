"""The `msc` console command: one module per sub-command.

Each module in COMMAND_MODULES exposes `register(subparsers)`, which adds its sub-command
and sets `func` on their parsers; `func(args)` returns the exit code. Only the module of the
sub-command being run is imported (Ray, MLflow and torch are slow to import), except for
`msc --help` or an unknown command, where every module registers so the listing is complete.

`key=value` overrides may come before, between or after the options (`msc sweep SPEC --storage
DIR data.root=/data`): argparse's `parse_intermixed_args` refuses parsers with sub-commands, so
`parse_command_line` collects the overrides that argparse left over itself.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = {
    "data": "msc_platform.cli.data",
    "train": "msc_platform.cli.train",
    "eval": "msc_platform.cli.eval",
    "export": "msc_platform.cli.export",
    "sweep": "msc_platform.cli.sweep",
    "tables": "msc_platform.cli.tables",
    "ablation": "msc_platform.cli.ablation",
}


def _modules_for(argv: list[str]) -> list[str]:
    """The command modules needed to parse `argv`: the chosen command's, or all of them."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    if first in COMMAND_MODULES:
        return [COMMAND_MODULES[first]]
    return list(COMMAND_MODULES.values())


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser with the sub-commands that `argv` needs (all when None)."""
    parser = argparse.ArgumentParser(prog="msc", description="Train, sweep and ablate MSC.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    names = _modules_for(argv) if argv is not None else list(COMMAND_MODULES.values())
    for name in names:
        importlib.import_module(name).register(subparsers)
    return parser


def is_override(arg: str) -> bool:
    """True for a `key=value` override (not an option such as `--storage=DIR`)."""
    return "=" in arg and not arg.startswith("-")


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv`, accepting `key=value` overrides in any position, in their given order.

    argparse binds the overrides positional to the first run of positionals only; the ones after
    an option come back as unrecognised and are appended here. Exits with usage (status 2) on an
    unknown option, or on overrides given to a command that takes none.
    """
    args, extras = parser.parse_known_args(argv)
    unknown = [arg for arg in extras if not is_override(arg)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extras:
        if not hasattr(args, "overrides"):
            parser.error(f"{args.command} takes no key=value overrides: {' '.join(extras)}")
        args.overrides = [*args.overrides, *extras]
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: the process arguments) and run the chosen sub-command."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_command_line(build_parser(argv), argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
