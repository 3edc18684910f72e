"""`msc train` (one training run) and `msc eval` (evaluate a checkpoint on the val split)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from data_tools.errors import DataValidationError
from msc_platform.checkpoint import CheckpointError
from msc_platform.config import ConfigError, load_config, to_yaml

DEFAULT_CONFIG = Path("experiments") / "configs" / "synthetic.yaml"


def register(subparsers) -> None:
    """Add the `train` and `eval` sub-commands."""
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

    evaluate = subparsers.add_parser("eval", help="evaluate a checkpoint on the validation split",
                                     description="R@1/5/10/100 and SumR (fused, clip, frame) and "
                                     "collapse diagnostics of a checkpoint, as JSON.")
    evaluate.add_argument("--checkpoint", required=True, help="last.pt or best.pt of a run")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value",
                          help="overrides of the stored config, e.g. train.eval_query_chunk=128")
    evaluate.add_argument("--data-root", help="data root (beats $MSC_DATA_ROOT and the checkpoint's)")
    evaluate.add_argument("--device", help="cpu, cuda, cuda:N (default: the config's train.device)")
    evaluate.add_argument("--out", help="also write the metrics JSON to this file")
    evaluate.add_argument("--ranks", help="also write the per-query ranks to this Parquet file")
    evaluate.set_defaults(func=run_eval)


def _fail(message: str) -> int:
    print(f"msc: error: {message}", file=sys.stderr)
    return 2


def run_train(args: argparse.Namespace) -> int:
    """Load the config, train, print the result as JSON; returns the exit code."""
    if args.resume and not args.out:
        return _fail("--resume needs --out (the run folder holding last.pt)")
    try:
        cfg = load_config(args.config, args.overrides, data_root=args.data_root)
    except ConfigError as err:
        return _fail(str(err))
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from msc_platform.train import NonFiniteLossError, train

    out = args.out or str(Path("runs") / f"{cfg.data.collection}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    try:
        result = train(cfg, out, resume=args.resume)
    except (ConfigError, DataValidationError, CheckpointError, NonFiniteLossError) as err:
        return _fail(str(err))
    print(json.dumps({"out": out, "run_id": result.run_id, "best_epoch": result.best_epoch,
                      "best_sumr": result.best_sumr, "metrics": result.metrics,
                      "checkpoint": str(result.checkpoint_path)}, indent=2))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint; print metrics JSON (and write --out / --ranks); returns exit code."""
    from msc_platform.evaluate import evaluate_checkpoint

    try:
        result = evaluate_checkpoint(args.checkpoint, overrides=args.overrides,
                                     data_root=args.data_root, device=args.device)
    except (ConfigError, DataValidationError, CheckpointError) as err:
        return _fail(str(err))
    payload = {"checkpoint": args.checkpoint, "epoch": result["epoch"],
               "collection": result["config"].data.collection, "metrics": result["metrics"]}
    text = json.dumps(payload, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.ranks:
        result["ranks"].to_parquet(args.ranks, index=False)
    return 0
