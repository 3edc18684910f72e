"""`msc eval`: evaluate a checkpoint (this project's, the released `best.ckpt`, or a registered
MLflow model) on the val split."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from data_tools.errors import DataValidationError
from msc_platform.cli.common import fail
from msc_platform.run.checkpoint import CheckpointError
from msc_platform.run.config import DEFAULT_CONFIG, ConfigError


def register(subparsers) -> None:
    """Add `msc eval` to the `msc` command."""
    evaluate = subparsers.add_parser(
        "eval", help="evaluate a checkpoint (this project's, the released best.ckpt, or a "
        "registered model) on val",
        description="R@1/5/10/100 and SumR (fused, clip, frame) and collapse diagnostics of a "
        "checkpoint: JSON on stdout, a table on stderr, and one MLflow run (metrics, "
        "ranks.parquet, tags checkpoint_format and checkpoint_sha256). The model comes from the "
        "checkpoint; the data and evaluation settings from --config.")
    evaluate.add_argument("--checkpoint", required=True,
                          help="last.pt / best.pt of a run, the released code's best.ckpt, or a "
                          "registered model: models:/msc-<collection>@best (also "
                          "models:/<name>/<version>), looked up in the registry at tracking.uri "
                          "of --config or the overrides, else $MLFLOW_TRACKING_URI, else "
                          "sqlite:///mlflow.db")
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


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint; print metrics JSON and a table (and write --out / --ranks)."""
    from msc_platform.reports.rendering import recall_display, to_markdown
    from msc_platform.run.checkpoint_eval import evaluate_checkpoint

    try:
        # stdout carries only the JSON: MLflow prints run links there when it logs to a server
        with contextlib.redirect_stdout(sys.stderr):
            result = evaluate_checkpoint(args.checkpoint, config_path=args.config,
                                         overrides=args.overrides, data_root=args.data_root,
                                         device=args.device)
    except (ConfigError, DataValidationError, CheckpointError) as err:
        return fail(str(err))
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
