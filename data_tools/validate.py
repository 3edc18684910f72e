"""Checks of a collection before anything uses it; every offender is counted, not just the first.

Checked: the four source files exist and open (an unreadable or truncated HDF5 file is named);
caption lines parse; no duplicate cap_id (within a split or across splits); every caption's video
is in the video file and every cap_id in the text file; each feature is a 2-d dataset, non-empty,
finite, and of the collection's width (the released width for tvr/activitynet/charades/qvhighlight,
otherwise the most common width in the file).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from data_tools.atomic import atomic_write_json
from data_tools.errors import DataValidationError, Problem
from data_tools.fingerprint import source_fingerprint
from data_tools.layout import SPLITS, Caption, Collection, feature_key, read_captions


@dataclass
class Report:
    """What a successful validation found."""

    collection: str
    captions: dict[str, int]  # split -> captions
    videos: dict[str, int]  # split -> distinct videos
    video_dim: int
    text_dim: int
    frames: dict[str, float]  # min / mean / max frames per video
    tokens: dict[str, float]  # min / mean / max tokens per caption
    fingerprint: str = ""
    optional_files: list[str] = field(default_factory=list)
    from_stamp: bool = False

    def summary(self) -> str:
        return (f"{self.collection}: captions {self.captions}, videos {self.videos}, "
                f"video_dim {self.video_dim}, text_dim {self.text_dim}, frames/video "
                f"{self.frames['min']:.0f}..{self.frames['max']:.0f} (mean {self.frames['mean']:.1f}), "
                f"tokens/caption {self.tokens['min']:.0f}..{self.tokens['max']:.0f}"
                + (" [unchanged since last validation]" if self.from_stamp else ""))


@dataclass
class _Features:
    """Shapes of the features that were read, per key."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def _caption_problems(collection: Collection, split: str, captions: list[Caption],
                      seen: dict[str, str]) -> list[Problem]:
    """Duplicate cap_ids inside this split, and cap_ids already used by another split."""
    file = collection.relative(collection.caption_file(split))
    problems = []
    lines: dict[str, list[int]] = {}
    for caption in captions:
        lines.setdefault(caption.cap_id, []).append(caption.line)
    for cap_id, where in lines.items():
        if len(where) > 1:
            problems.append(Problem(file, cap_id, f"duplicate cap_id on lines {where}", "duplicate id"))
        if cap_id in seen:
            problems.append(Problem(file, cap_id, f"cap_id also in the {seen[cap_id]} split",
                                    "duplicate id"))
    for cap_id in lines:
        seen.setdefault(cap_id, split)
    if not captions:
        problems.append(Problem(file, "-", "no captions", "no captions"))
    return problems


def _open_h5(collection: Collection, path: Path, problems: list[Problem]):
    """Open an HDF5 file read-only; record a problem and return None when it cannot be read."""
    file = collection.relative(path)
    if not path.is_file():
        problems.append(Problem(file, "-", "file not found", "file not found"))
        return None
    try:
        return h5py.File(path, "r")
    except OSError as err:
        problems.append(Problem(file, "-", f"unreadable HDF5 file (truncated or corrupt?): {err}",
                                "unreadable file"))
        return None


def _check_feature(handle, file: str, key: str, missing: tuple[str, str], problems: list[Problem],
                   found: _Features) -> None:
    """Presence, type, ndim, emptiness and finiteness of one feature; records its shape.

    `missing` is (kind, detail) of the problem recorded when the key is absent.
    """
    if key not in handle:
        problems.append(Problem(file, key, f"{missing[0]} ({missing[1]})", missing[0]))
        return
    item = handle[key]
    if not isinstance(item, h5py.Dataset):
        problems.append(Problem(file, key, "is a group, not a dataset", "not a dataset"))
        return
    if item.ndim != 2:
        problems.append(Problem(file, key, f"ndim {item.ndim} (shape {item.shape}), expected 2",
                                "wrong ndim"))
        return
    if item.shape[0] == 0 or item.shape[1] == 0:
        problems.append(Problem(file, key, f"empty sequence (shape {item.shape})", "empty sequence"))
        return
    try:
        values = item[()]
    except OSError as err:
        problems.append(Problem(file, key, f"unreadable dataset (truncated file?): {err}",
                                "unreadable dataset"))
        return
    if not np.issubdtype(values.dtype, np.number):
        problems.append(Problem(file, key, f"dtype {values.dtype} is not numeric", "wrong dtype"))
        return
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        problems.append(Problem(file, key, f"{bad} non-finite value(s) (NaN/inf)", "non-finite values"))
        return
    found.shapes[key] = item.shape


def _width_problems(file: str, found: _Features, expected: int | None) -> tuple[int, list[Problem]]:
    """Keys whose width differs from `expected` (or, without one, from the most common width)."""
    widths = Counter(shape[1] for shape in found.shapes.values())
    if not widths:
        return 0, []
    reference = expected if expected is not None else widths.most_common(1)[0][0]
    rule = "released width" if expected is not None else "most common width in the file"
    problems = [Problem(file, key, f"width {shape[1]}, expected {reference} ({rule})", "wrong width")
                for key, shape in found.shapes.items() if shape[1] != reference]
    return reference, problems


def _stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {"min": 0.0, "mean": 0.0, "max": 0.0}
    return {"min": float(min(lengths)), "mean": float(np.mean(lengths)), "max": float(max(lengths))}


def _scan(collection: Collection) -> Report:
    """The full check; raises DataValidationError listing every problem found."""
    problems: list[Problem] = []
    splits: dict[str, list[Caption]] = {}
    seen: dict[str, str] = {}
    for split in SPLITS:
        try:
            splits[split] = read_captions(collection.caption_file(split))
        except DataValidationError as err:
            problems.extend(Problem(collection.relative(Path(p.file)), p.key, p.problem, p.kind)
                            for p in err.problems)
            splits[split] = []
            continue
        problems.extend(_caption_problems(collection, split, splits[split], seen))
    video_file = _open_h5(collection, collection.video_h5, problems)
    text_file = _open_h5(collection, collection.text_h5, problems)
    known = collection.known_widths() or (None, None)
    videos, texts = _Features(), _Features()
    dims = [0, 0]
    try:
        if video_file is not None:
            _check_videos(collection, video_file, splits, problems, videos)
            dims[0], wrong = _width_problems(collection.relative(collection.video_h5), videos, known[0])
            problems.extend(wrong)
        if text_file is not None:
            _check_texts(collection, text_file, splits, problems, texts)
            dims[1], wrong = _width_problems(collection.relative(collection.text_h5), texts, known[1])
            problems.extend(wrong)
    finally:
        for handle in (video_file, text_file):
            if handle is not None:
                handle.close()
    if problems:
        raise DataValidationError(problems, f"collection '{collection.name}' at {collection.dir}")
    return Report(collection.name,
                  {s: len(c) for s, c in splits.items()},
                  {s: len({c.video_id for c in cs}) for s, cs in splits.items()},
                  dims[0], dims[1],
                  _stats([shape[0] for shape in videos.shapes.values()]),
                  _stats([shape[0] for shape in texts.shapes.values()]),
                  optional_files=[collection.relative(p) for p in collection.optional_files()])


def _check_videos(collection, handle, splits, problems, found) -> None:
    """Every caption's video (via `feature_key`) is present and well formed."""
    file = collection.relative(collection.video_h5)
    needed: dict[str, list[str]] = {}
    for split, captions in splits.items():
        for caption in captions:
            key = feature_key(collection.name, caption.video_id)
            needed.setdefault(key, []).append(f"{caption.cap_id} in {split}")
    for key, users in needed.items():
        more = f" and {len(users) - 1} more" if len(users) > 1 else ""
        _check_feature(handle, file, key, ("missing video", f"needed by caption {users[0]}{more}"),
                       problems, found)


def _check_texts(collection, handle, splits, problems, found) -> None:
    """Every caption's text features (key = cap_id) are present and well formed."""
    file = collection.relative(collection.text_h5)
    for split, captions in splits.items():
        for caption in dict((c.cap_id, c) for c in captions).values():
            _check_feature(handle, file, caption.cap_id,
                           ("missing text key", f"caption in the {split} split"), problems, found)


def _stamp_path(stamp_dir: Path, collection: Collection, fingerprint: str) -> Path:
    return Path(stamp_dir) / f"validated-{collection.name}-{fingerprint[:24]}.json"


def _drop_other_stamps(keep: Path, collection: Collection) -> None:
    """Remove this collection's stamps of earlier fingerprints."""
    for path in keep.parent.glob(f"validated-{collection.name}-*.json"):
        if path != keep and len(path.name) == len(keep.name):
            path.unlink(missing_ok=True)


def validate_collection(root, collection: str, stamp_dir=None) -> Report:
    """Validate `{root}/{collection}`; returns a Report or raises DataValidationError.

    With `stamp_dir`, a successful validation leaves a stamp keyed by the source fingerprint
    (`data_tools.fingerprint`), and a later call on unchanged files returns the stamped report
    without re-reading the features.
    """
    target = Collection(root, collection)
    try:
        fingerprint = source_fingerprint(target)
    except OSError:
        fingerprint = ""
    stamp = _stamp_path(stamp_dir, target, fingerprint) if stamp_dir and fingerprint else None
    if stamp is not None and stamp.is_file():
        report = Report(**json.loads(stamp.read_text()))
        report.from_stamp = True
        return report
    report = _scan(target)
    report.fingerprint = fingerprint
    if stamp is not None:
        atomic_write_json(stamp, asdict(report), indent=1)
        _drop_other_stamps(stamp, target)
    return report
