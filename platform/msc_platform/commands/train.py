"""`msc train` (one training run), `msc eval` (evaluate a checkpoint on the val split) and
`msc export` (write a project checkpoint in the released code's `best.ckpt` format)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from data_tools.errors import DataValidationError
from msc_platform.checkpoint import CheckpointError
from msc_platform.config import DEFAULT_CONFIG, ConfigError, load_config, to_yaml


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

    evaluate = subparsers.add_parser(
        "eval", help="evaluate a checkpoint (this project's or the released best.ckpt) on val",
        description="R@1/5/10/100 and SumR (fused, clip, frame) and collapse diagnostics of a "
        "checkpoint: JSON on stdout, a table on stderr, and one MLflow run (metrics, "
        "ranks.parquet, tags checkpoint_format and checkpoint_sha256). The model comes from the "
        "checkpoint; the data and evaluation settings from --config.")
    evaluate.add_argument("--checkpoint", required=True,
                          help="last.pt / best.pt of a run, or the released code's best.ckpt")
    evaluate.add_argument("--config", help="YAML config for data, evaluation and tracking "
                          "(default: the checkpoint's own config; for a released checkpoint "
                          f"{DEFAULT_CONFIG})")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value",
                          help="overrides, e.g. train.eval_query_chunk=128 tracking.enabled=false")
    evaluate.add_argument("--data-root", help="data root (beats $MSC_DATA_ROOT and the config's)")
    evaluate.add_argument("--device", help="cpu, cuda, cuda:N (default: the config's train.device)")
    evaluate.add_argument("--out", help="also write the metrics JSON to this file")
    evaluate.add_argument("--ranks", help="also write the per-query ranks to this Parquet file")
    evaluate.set_defaults(func=run_eval)

    export = subparsers.add_parser(
        "export", help="write a checkpoint in the released code's best.ckpt format",
        description="Convert this project's last.pt/best.pt into the released code's format "
        "({config, epoch, model_val, state_dict, optimizer}, released parameter names), which "
        "its main.py --eval --resume loads.")
    export.add_argument("--checkpoint", required=True, help="last.pt or best.pt of a run")
    export.add_argument("--out", required=True, help="file to write, e.g. best.ckpt")
    export.set_defaults(func=run_export)


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
    """Evaluate a checkpoint; print metrics JSON and a table (and write --out / --ranks)."""
    from msc_platform.checkpoint_eval import evaluate_checkpoint
    from msc_platform.table_render import recall_display, to_markdown

    try:
        result = evaluate_checkpoint(args.checkpoint, config_path=args.config,
                                     overrides=args.overrides, data_root=args.data_root,
                                     device=args.device)
    except (ConfigError, DataValidationError, CheckpointError) as err:
        return _fail(str(err))
    payload = {"checkpoint": args.checkpoint, "format": result.format, "sha256": result.sha256,
               "epoch": result.epoch, "collection": result.config.data.collection,
               "run_id": result.run_id, "metrics": result.metrics}
    text = json.dumps(payload, indent=2)
    print(text)
    print(to_markdown(recall_display(result.metrics)), file=sys.stderr, end="")
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.ranks:
        result.ranks.to_parquet(args.ranks, index=False)
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write --checkpoint in the released format at --out; print what was written as JSON."""
    from msc_platform.model_checkpoints import export_authors_checkpoint, file_sha256

    try:
        written = export_authors_checkpoint(args.checkpoint, args.out)
    except (ConfigError, CheckpointError) as err:
        return _fail(str(err))
    print(json.dumps({"checkpoint": args.checkpoint, "out": str(written),
                      "sha256": file_sha256(written)}, indent=2))
    return 0
