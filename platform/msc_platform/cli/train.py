"""`msc train`: one training run from a YAML config and key=value overrides."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from data_tools.errors import DataValidationError
from msc_platform.cli.common import fail
from msc_platform.run.checkpoint import CheckpointError
from msc_platform.run.config import DEFAULT_CONFIG, ConfigError, load_config, to_yaml


def register(subparsers) -> None:
    """Add `msc train` to the `msc` command."""
    train = subparsers.add_parser("train", help="train MSC with a YAML config and key=value overrides",
                                  description="Train MSC; evaluates after every epoch and logs to MLflow.")
    train.add_argument("--config", default=str(DEFAULT_CONFIG),
                       help=f"YAML config (default: {DEFAULT_CONFIG})")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted overrides, e.g. train.lr=1e-4 model.cbva=fixed")
    train.add_argument("--data-root", help="data root (beats $MSC_DATA_ROOT and data.root)")
    train.add_argument("--out", help="run folder for last.pt/best.pt/ranks.parquet "
                       "(default: runs/<collection>-<UTC time>; required with --resume)")
    train.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config and exit")
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Load the config, train, print the result as JSON; returns the exit code."""
    if args.resume and not args.out:
        return fail("--resume needs --out (the run folder holding last.pt)")
    try:
        cfg = load_config(args.config, args.overrides, data_root=args.data_root)
    except ConfigError as err:
        return fail(str(err))
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from msc_platform.run.train import NonFiniteLossError, train

    out = args.out or str(Path("runs") / f"{cfg.data.collection}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    try:
        # stdout carries only the JSON: MLflow prints run links there when it logs to a server
        with contextlib.redirect_stdout(sys.stderr):
            result = train(cfg, out, resume=args.resume)
    except (ConfigError, DataValidationError, CheckpointError, NonFiniteLossError) as err:
        return fail(str(err))
    print(json.dumps({"out": out, "run_id": result.run_id, "best_epoch": result.best_epoch,
                      "best_sumr": result.best_sumr, "metrics": result.metrics,
                      "checkpoint": str(result.checkpoint_path)}, indent=2))
    return 0
