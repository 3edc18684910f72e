"""What several `msc` commands share: the error line and the options of a Tune run
(sweep, ablation). Imports nothing heavy (no torch, Ray or MLflow)."""
from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    """Print `msc: error: <message>` on stderr; returns `code` (the exit code)."""
    print(f"msc: error: {message}", file=sys.stderr)
    return code


def add_run_arguments(parser: argparse.ArgumentParser, kind: str, example: str,
                      spec_key_example: str) -> None:
    """The arguments every Tune-run command shares: spec, overrides, --address, --resume,
    --storage, --quiet (`kind` names the run in the help: sweep or grid)."""
    parser.add_argument("spec", help=f"{kind} spec YAML, e.g. {example}")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"spec keys ({spec_key_example}) or training config keys (train.epochs=2)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (host:port); default $RAY_ADDRESS, else local Ray")
    parser.add_argument("--resume", action="store_true",
                        help=f"continue the latest interrupted {kind} of this spec")
    parser.add_argument("--storage", default=None,
                        help="results folder or URI (default: the spec's storage_path or runs/sweeps/<name>)")
    parser.add_argument("--quiet", action="store_true", help="no Ray Tune progress table")
