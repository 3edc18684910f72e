"""`msc export`: write a project checkpoint in the released code's `best.ckpt` format."""
from __future__ import annotations

import argparse
import json

from msc_platform.cli.common import fail
from msc_platform.run.checkpoint import CheckpointError
from msc_platform.run.config import ConfigError


def register(subparsers) -> None:
    """Add `msc export` to the `msc` command."""
    export = subparsers.add_parser(
        "export", help="write a checkpoint in the released code's best.ckpt format",
        description="Convert this project's last.pt/best.pt into the released code's format "
        "({config, epoch, model_val, state_dict, optimizer}, released parameter names), which "
        "its main.py --eval --resume loads.")
    export.add_argument("--checkpoint", required=True, help="last.pt or best.pt of a run")
    export.add_argument("--out", required=True, help="file to write, e.g. best.ckpt")
    export.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Write --checkpoint in the released format at --out; print what was written as JSON."""
    from msc_platform.run.model_checkpoints import export_authors_checkpoint, file_sha256

    try:
        written = export_authors_checkpoint(args.checkpoint, args.out)
    except (ConfigError, CheckpointError) as err:
        return fail(str(err))
    print(json.dumps({"checkpoint": args.checkpoint, "out": str(written),
                      "sha256": file_sha256(written)}, indent=2))
    return 0
