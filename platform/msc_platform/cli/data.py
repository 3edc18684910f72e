"""`msc data synth|validate|cache`: generate, check and cache a collection."""
from __future__ import annotations

import argparse
import sys
import time

from data_tools.cache import build_or_load
from data_tools.errors import DataValidationError
from data_tools.synth import PRESETS, synthesize
from data_tools.validate import validate_collection

SIZE_FLAGS = ("train_videos", "val_videos", "video_dim", "text_dim", "concepts")


def _synth(args: argparse.Namespace) -> int:
    sizes = {name: getattr(args, name) for name in SIZE_FLAGS if getattr(args, name) is not None}
    start = time.perf_counter()
    try:
        target = synthesize(args.root, args.collection, args.preset, args.seed,
                            overwrite=args.overwrite, **sizes)
    except (ValueError, FileExistsError) as err:
        print(f"msc data synth: {err}", file=sys.stderr)
        return 2
    print(f"wrote {target.dir} ({args.preset}, seed {args.seed}) in {time.perf_counter() - start:.1f}s")
    return 0


def _validate(args: argparse.Namespace) -> int:
    try:
        report = validate_collection(args.root, args.collection, stamp_dir=args.cache_dir)
    except DataValidationError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"ok: {report.summary()}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        cache = build_or_load(args.root, args.collection, args.cache_dir)
    except DataValidationError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"cache {cache.path} ({len(cache.index.video_ids)} videos, {len(cache.index.cap_ids)} "
          f"captions) ready in {time.perf_counter() - start:.1f}s")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="data root holding {collection}/TextData and FeatureData")
    parser.add_argument("--collection", default="synthetic",
                        help="collection name: tvr, activitynet, charades, qvhighlight or any other")


def register(subparsers) -> None:
    """Add `msc data` with the synth, validate and cache sub-commands."""
    data = subparsers.add_parser("data", help="generate, validate and cache datasets")
    commands = data.add_subparsers(dest="data_command", required=True)

    synth = commands.add_parser("synth", help="write a synthetic collection in the release layout")
    _common(synth)
    synth.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true", help="replace an existing collection")
    for name in SIZE_FLAGS:
        synth.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None,
                           help=f"override the preset's {name}")
    synth.set_defaults(func=_synth)

    validate = commands.add_parser("validate", help="check a collection; lists every problem")
    _common(validate)
    validate.add_argument("--cache-dir", default=None,
                          help="where to keep the validation stamp (skips re-reading unchanged files)")
    validate.set_defaults(func=_validate)

    cache = commands.add_parser("cache", help="validate, then build (or reuse) the feature cache")
    _common(cache)
    cache.add_argument("--cache-dir", default=None, help="default: {root}/.cache")
    cache.set_defaults(func=_cache)
