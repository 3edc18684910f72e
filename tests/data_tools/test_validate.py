"""Validation: every kind of bad input gives `file: key: problem` lines with offender counts."""
from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest

from data_tools.errors import DataValidationError
from data_tools.layout import Collection, read_captions
from data_tools.validate import validate_collection

VIDEO_FILE = "synthetic/FeatureData/synthetic_clip_L14.h5"
TEXT_FILE = "synthetic/TextData/synthetic_clip_L14.h5"


def _problems(collection) -> DataValidationError:
    with pytest.raises(DataValidationError) as caught:
        validate_collection(collection.root, collection.name)
    return caught.value


def _replace(path, key, value) -> None:
    with h5py.File(path, "a") as handle:
        del handle[key]
        handle.create_dataset(key, data=value)


def _train_captions(collection):
    return read_captions(collection.caption_file("train"))


def test_a_good_collection_passes(tiny_root):
    report = validate_collection(tiny_root, "synthetic")
    assert report.captions["train"] > 0 and report.videos == {"train": 24, "val": 12}
    assert (report.video_dim, report.text_dim) == (32, 32)


def test_truncated_h5_is_named(tiny_copy):
    path = tiny_copy.video_h5
    os.truncate(path, path.stat().st_size // 2)
    error = _problems(tiny_copy)
    assert f"{VIDEO_FILE}: -: unreadable HDF5 file (truncated or corrupt?)" in str(error)


def test_missing_videos_are_all_counted(tiny_copy):
    gone = sorted({c.video_id for c in _train_captions(tiny_copy)})[:2]
    with h5py.File(tiny_copy.video_h5, "a") as handle:
        for video_id in gone:
            del handle[video_id]
    error = _problems(tiny_copy)
    assert f"{VIDEO_FILE}: missing video: 2 offender(s)" in str(error)
    assert f"{VIDEO_FILE}: {gone[0]}: missing video (needed by caption {gone[0]}#enc#0" in str(error)
    assert [p.key for p in error.problems] == gone


def test_missing_text_key(tiny_copy):
    cap_id = _train_captions(tiny_copy)[5].cap_id
    with h5py.File(tiny_copy.text_h5, "a") as handle:
        del handle[cap_id]
    assert f"{TEXT_FILE}: {cap_id}: missing text key (caption in the train split)" in str(_problems(tiny_copy))


def test_non_finite_values_count_every_offender_and_show_the_first_few(tiny_copy):
    with h5py.File(tiny_copy.video_h5, "r") as handle:
        keys = sorted(handle)[:7]
        arrays = {key: handle[key][()] for key in keys}
    for key, array in arrays.items():
        array[1, 2] = np.nan
        _replace(tiny_copy.video_h5, key, array)
    error = _problems(tiny_copy)
    assert f"{VIDEO_FILE}: non-finite values: 7 offender(s), first 5 shown" in str(error)
    assert f"{VIDEO_FILE}: {keys[0]}: 1 non-finite value(s) (NaN/inf)" in str(error)
    assert str(error).count("non-finite value(s)") == 5
    assert len(error.problems) == 7


def test_wrong_width(tiny_copy):
    cap_id = _train_captions(tiny_copy)[0].cap_id
    _replace(tiny_copy.text_h5, cap_id, np.ones((5, 33), dtype=np.float32))
    expected = f"{TEXT_FILE}: {cap_id}: width 33, expected 32 (most common width in the file)"
    assert expected in str(_problems(tiny_copy))


def test_released_collections_are_held_to_their_real_width(tiny_copy):
    charades = Collection(tiny_copy.root, "charades")
    for sub in ("TextData", "FeatureData"):
        (charades.dir / sub).mkdir(parents=True)
    for source, target in zip(tiny_copy.source_files(), charades.source_files(), strict=True):
        shutil.copy(source, target)
    error = _problems(charades)
    videos = len({c.video_id for c in _train_captions(tiny_copy)}) + 12
    assert f"charades/FeatureData/charades_clip_L14.h5: wrong width: {videos} offender(s)" in str(error)
    assert "width 32, expected 768 (released width)" in str(error)


def test_empty_sequence_and_wrong_ndim(tiny_copy):
    with h5py.File(tiny_copy.video_h5, "r") as handle:
        first, second = sorted(handle)[:2]
    _replace(tiny_copy.video_h5, first, np.zeros((0, 32), dtype=np.float32))
    _replace(tiny_copy.video_h5, second, np.zeros((4, 8, 32), dtype=np.float32))
    message = str(_problems(tiny_copy))
    assert f"{VIDEO_FILE}: {first}: empty sequence (shape (0, 32))" in message
    assert f"{VIDEO_FILE}: {second}: ndim 3 (shape (4, 8, 32)), expected 2" in message


def test_duplicate_cap_id_lines(tiny_copy):
    path = tiny_copy.caption_file("train")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[2]]) + "\n")
    cap_id = lines[2].split()[0]
    message = str(_problems(tiny_copy))
    assert f"synthetic/TextData/synthetictrain.caption.txt: {cap_id}: duplicate cap_id on lines " \
           f"[3, {len(lines) + 1}]" in message


def test_cap_id_in_both_splits(tiny_copy):
    train_line = tiny_copy.caption_file("train").read_text().splitlines()[0]
    val = tiny_copy.caption_file("val")
    val.write_text(val.read_text() + train_line + "\n")
    assert "cap_id also in the train split" in str(_problems(tiny_copy))


def test_missing_file_is_named(tiny_copy):
    tiny_copy.text_h5.unlink()
    assert f"{TEXT_FILE}: -: file not found" in str(_problems(tiny_copy))


def test_stamp_skips_a_rescan_until_a_file_changes(tiny_copy, tmp_path):
    stamps = tmp_path / "stamps"
    assert not validate_collection(tiny_copy.root, "synthetic", stamp_dir=stamps).from_stamp
    assert validate_collection(tiny_copy.root, "synthetic", stamp_dir=stamps).from_stamp
    with h5py.File(tiny_copy.video_h5, "r") as handle:
        key = sorted(handle)[0]
        array = handle[key][()]
    array[0, 0] = np.inf
    _replace(tiny_copy.video_h5, key, array)
    with pytest.raises(DataValidationError, match=f"{key}: 1 non-finite value"):
        validate_collection(tiny_copy.root, "synthetic", stamp_dir=stamps)
    assert len(list(stamps.glob("validated-synthetic-*.json"))) == 1
