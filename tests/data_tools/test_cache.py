"""Feature cache: contents (docs/data.md), reuse, invalidation, atomic builds."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from data_tools import cache as cache_module
from data_tools.cache import FeatureCache, build_or_load, cache_lock
from data_tools.errors import DataValidationError
from data_tools.layout import feature_key
from model.merge import fixed_length, l2_normalize, order_preserving_merge

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_cache(tiny_root, tmp_path_factory) -> FeatureCache:
    return build_or_load(tiny_root, "synthetic", tmp_path_factory.mktemp("cache"))


def test_cache_holds_the_spec_inputs_of_every_video(tiny_root, tiny_cache):
    """Frames normalised after fixed_length; OP-ToMe on un-normalised rows, normalised after."""
    video_id = tiny_cache.index.video_ids[5]
    with h5py.File(tiny_root / "synthetic/FeatureData/synthetic_clip_L14.h5", "r") as handle:
        raw = torch.from_numpy(handle[feature_key("synthetic", video_id)][()])
    fixed = fixed_length(raw, 128)  # [128, Dv]
    tokens, sizes, labels = order_preserving_merge(fixed[None])
    got = tiny_cache.video(5, "optome")
    np.testing.assert_allclose(got["frames"], l2_normalize(fixed).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["clips"], l2_normalize(tokens[0]).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got["clip_sizes"], sizes[0].numpy())
    np.testing.assert_array_equal(got["clip_labels"], labels[0].numpy())
    uniform = tiny_cache.video(5, "uniform")
    np.testing.assert_array_equal(uniform["clip_labels"], np.arange(128) // 4)
    np.testing.assert_array_equal(uniform["clip_sizes"], np.full(32, 4.0, dtype=np.float32))
    arrays = tiny_cache.arrays()
    assert np.all(np.diff(arrays["optome_labels"], axis=1) >= 0)
    np.testing.assert_allclose(arrays["optome_sizes"].sum(axis=1), 128.0)
    frames = arrays["frames"]
    assert not frames.flags.writeable and not frames.flags.owndata  # a read-only view of the map
    assert isinstance(frames.base, np.memmap) or "mmap" in type(frames.base).__name__


def test_text_tokens_are_truncated_to_77_and_normalised(tmp_path):
    from data_tools.synth import synthesize

    target = synthesize(tmp_path, "long", "tiny", seed=0, train_videos=3, val_videos=2,
                        tokens_min=70, tokens_max=90)
    cache = build_or_load(tmp_path, "long", tmp_path / "cache")
    with h5py.File(target.text_h5, "r") as handle:
        lengths = [handle[cap_id].shape[0] for cap_id in cache.index.cap_ids]
        raw = handle[cache.index.cap_ids[0]][()]
    assert max(lengths) > 77
    assert [cache.tokens(row).shape[0] for row in range(len(lengths))] == [min(n, 77) for n in lengths]
    first = cache.tokens(0)
    np.testing.assert_allclose(first, raw[:77] / (np.linalg.norm(raw[:77], axis=1, keepdims=True) + 1e-5),
                               rtol=1e-6, atol=1e-7)


def test_second_call_loads_without_rebuilding(tiny_root, tiny_cache):
    stamp = (tiny_cache.path / "manifest.json").stat().st_mtime_ns
    again = build_or_load(tiny_root, "synthetic", tiny_cache.path.parent)
    assert again.path == tiny_cache.path
    assert (again.path / "manifest.json").stat().st_mtime_ns == stamp


def test_a_changed_source_file_rebuilds_the_cache(tiny_copy, tmp_path):
    cache_dir = tmp_path / "cache"
    before = build_or_load(tiny_copy.root, "synthetic", cache_dir)
    with h5py.File(tiny_copy.video_h5, "a") as handle:
        key = feature_key("synthetic", before.index.video_ids[0])
        data = handle[key][()]
        handle[key][...] = data[::-1]  # same shape, new content
    after = build_or_load(tiny_copy.root, "synthetic", cache_dir)
    assert after.key != before.key
    assert not np.array_equal(after.video(0, "optome")["frames"], before.video(0, "optome")["frames"])
    assert [p.name for p in cache_dir.glob("synthetic-*")] == [after.path.name]  # stale one removed


def test_a_changed_caption_file_or_merge_setting_gives_a_new_key(tiny_copy, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = build_or_load(tiny_copy.root, "synthetic", cache_dir)
    path = tiny_copy.caption_file("val")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    second = build_or_load(tiny_copy.root, "synthetic", cache_dir)
    assert second.key != first.key and len(second.index.cap_ids) == len(first.index.cap_ids) - 1
    monkeypatch.setitem(cache_module.SETTINGS, "optome_targets", [80, 52, 33])
    assert cache_module.cache_key(second.fingerprint) != second.key


def test_a_crash_mid_write_leaves_no_valid_cache(tiny_copy, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(cache_module, "_write_texts", crash)
    with pytest.raises(KeyboardInterrupt):
        build_or_load(tiny_copy.root, "synthetic", cache_dir)
    assert not list(cache_dir.glob("synthetic-*"))
    monkeypatch.undo()
    # a builder killed outright leaves its temporary directory; it never loads and is swept,
    # unlike the directory of a builder still running or of another collection
    key = cache_module.cache_key(cache_module.source_fingerprint(tiny_copy))
    dead = cache_dir / f".synthetic-{key}.tmp-999999999-deadbeef"
    running = cache_dir / f".synthetic-{key}.tmp-{os.getpid()}-0123abcd"
    other = cache_dir / f".synthetic-extra-{key}.tmp-999999999-deadbeef"
    for folder in (dead, running, other):
        folder.mkdir()
        (folder / "frames.npy").write_bytes(b"partial")
    cache = build_or_load(tiny_copy.root, "synthetic", cache_dir)
    assert not dead.exists() and running.exists() and other.exists()
    # a cache directory missing its manifest (or with a short array) is rebuilt, not trusted
    (cache.path / "manifest.json").unlink()
    assert build_or_load(tiny_copy.root, "synthetic", cache_dir).video(0, "optome")["frames"].shape == (128, 32)
    np.save(cache.path / "frames.npy", np.zeros((1, 128, 32), dtype=np.float32))
    rebuilt = build_or_load(tiny_copy.root, "synthetic", cache_dir)
    assert rebuilt.arrays()["frames"].shape[0] == len(rebuilt.index.video_ids)


def test_bad_data_is_rejected_before_building(tiny_copy, tmp_path):
    with h5py.File(tiny_copy.text_h5, "a") as handle:
        del handle[sorted(handle)[0]]
    with pytest.raises(DataValidationError, match="missing text key"):
        build_or_load(tiny_copy.root, "synthetic", tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("synthetic-*"))
    tiny_copy.video_h5.unlink()
    with pytest.raises(DataValidationError, match="synthetic_clip_L14.h5: -: file not found"):
        build_or_load(tiny_copy.root, "synthetic", tmp_path / "cache")


def test_touching_a_source_file_counts_as_a_change(tiny_copy, tmp_path):
    cache_dir = tmp_path / "cache"
    first = build_or_load(tiny_copy.root, "synthetic", cache_dir)
    later = time.time() + 5
    os.utime(tiny_copy.text_h5, (later, later))
    assert build_or_load(tiny_copy.root, "synthetic", cache_dir).key != first.key


BUILDER = """
import sys
from data_tools.cache import build_or_load
print("imported", flush=True)
print(build_or_load(sys.argv[1], "synthetic", sys.argv[2]).path, flush=True)
"""


@pytest.mark.slow
def test_a_builder_waits_for_the_lock_and_the_next_caller_loads_what_it_built(tiny_copy, tmp_path):
    cache_dir = tmp_path / "cache"
    with cache_lock(cache_dir, "synthetic"):
        builder = subprocess.Popen([sys.executable, "-c", BUILDER, str(tiny_copy.root),
                                    str(cache_dir)], stdout=subprocess.PIPE, text=True,
                                   cwd=REPO_ROOT)
        try:
            assert builder.stdout.readline().strip() == "imported"
            time.sleep(2.0)
            assert builder.poll() is None and not list(cache_dir.glob("synthetic-*"))
        except BaseException:
            builder.kill()
            raise
    out, _ = builder.communicate(timeout=120)
    assert builder.returncode == 0
    manifest = cache_dir / out.strip() / "manifest.json"
    built_at = manifest.stat().st_mtime_ns
    assert build_or_load(tiny_copy.root, "synthetic", cache_dir).path == manifest.parent
    assert manifest.stat().st_mtime_ns == built_at
    assert [p.name for p in cache_dir.glob("synthetic-*")] == [manifest.parent.name]
