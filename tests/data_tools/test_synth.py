"""Synthetic generator: exact layout, determinism, PRVR structure, atomic first-use generation."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from data_tools.layout import Collection, feature_key, read_captions
from data_tools.synth import PRESETS, ensure_synthetic, read_marker, resolve_sizes, synthesize


def _features(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        return {key: handle[key][()] for key in handle}


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_writes_exactly_the_release_layout(tiny_root):
    target = Collection(tiny_root, "synthetic")
    files = sorted(str(p.relative_to(target.dir)) for p in target.dir.rglob("*") if p.is_file())
    assert files == ["FeatureData/synthetic_clip_L14.h5", "TextData/synthetic_clip_L14.h5",
                     "TextData/synthetictrain.caption.txt", "TextData/syntheticval.caption.txt",
                     "synth.json"]
    tiny = PRESETS["tiny"]
    train, val = read_captions(target.caption_file("train")), read_captions(target.caption_file("val"))
    assert len({c.video_id for c in train}) == tiny.train_videos
    assert len({c.video_id for c in val}) == tiny.val_videos
    assert not {c.video_id for c in train} & {c.video_id for c in val}
    videos, texts = _features(target.video_h5), _features(target.text_h5)
    assert set(texts) == {c.cap_id for c in train + val}
    assert set(videos) == {c.video_id for c in train + val}
    lengths = [v.shape[0] for v in videos.values()]
    assert min(lengths) < 128 < max(lengths)  # both the repeat and the average path of fixed_length
    assert {v.shape[1] for v in videos.values()} == {tiny.video_dim}
    assert all(v.dtype == np.float32 for v in videos.values())


def test_same_seed_same_data_other_seed_other_data(tiny_root, tmp_path):
    again = synthesize(tmp_path, "synthetic", "tiny", seed=0)
    other = synthesize(tmp_path, "other", "tiny", seed=1)
    reference = Collection(tiny_root, "synthetic")
    first, second = _features(reference.video_h5), _features(again.video_h5)
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert reference.caption_file("val").read_text() == again.caption_file("val").read_text()
    third = _features(other.video_h5)
    assert not np.allclose(first["video000000"][:5], third["video000000"][:5])


def test_frames_have_clip_like_statistics(tiny_root):
    videos = _features(Collection(tiny_root, "synthetic").video_h5)
    norms = np.concatenate([np.linalg.norm(v, axis=1) for v in videos.values()])
    assert 0.9 < norms.min() and norms.max() < 1.1  # unit-ish norms
    adjacent = np.concatenate([np.sum(_unit(v[1:]) * _unit(v[:-1]), axis=1) for v in videos.values()])
    assert np.median(adjacent) > 0.85  # high similarity inside an event
    means = _unit(np.stack([v.mean(axis=0) for v in videos.values()]))
    across = means @ means.T
    off = across[~np.eye(len(means), dtype=bool)]
    assert 0.2 < off.mean() < 0.9  # a common component, yet videos differ
    assert adjacent.min() < 0.8  # event boundaries exist inside videos


def _end_token_similarity(target):
    captions = read_captions(target.caption_file("train")) + read_captions(target.caption_file("val"))
    texts = _features(target.text_h5)
    ends = _unit(np.stack([texts[c.cap_id][-1] for c in captions]))
    concept = np.array([int(c.text.split()[3]) for c in captions])  # "someone performs activity N .."
    video = np.array([c.video_id for c in captions])
    return ends @ ends.T, concept[:, None] == concept[None, :], video[:, None] != video[None, :]


def test_captions_share_concepts_and_near_duplicates_across_videos(tiny_root, tmp_path):
    sim, same_concept, other_video = _end_token_similarity(Collection(tiny_root, "synthetic"))
    # end tokens carry the described event: same concept in another video is closer than others
    assert sim[same_concept & other_video].mean() > sim[~same_concept & other_video].mean() + 0.1
    near_duplicates = (sim > 0.9) & other_video
    assert near_duplicates.any()
    plain = synthesize(tmp_path, "synthetic", "tiny", seed=0, duplicate_prob=0.0)
    sim_plain, _, other_plain = _end_token_similarity(plain)
    assert ((sim_plain > 0.9) & other_plain).sum() < near_duplicates.sum()


def test_activitynet_layout_uses_the_v_rule(tmp_path):
    target = synthesize(tmp_path, "activitynet", "tiny", seed=0, train_videos=3, val_videos=2,
                        frames_max=20)
    captions = read_captions(target.caption_file("train"))
    assert all(c.cap_id.startswith("v_") for c in captions)
    with h5py.File(target.video_h5, "r") as handle:
        keys = set(handle)
        assert {feature_key("activitynet", c.video_id) for c in captions} <= keys
        assert not any(k.startswith("v_") for k in keys)
        assert handle[next(iter(keys))].shape[1] == 768  # released width


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="unknown synth preset 'huge'"):
        resolve_sizes("synthetic", "huge")
    with pytest.raises(ValueError, match=r"unknown synth size\(s\) \['videos'\]"):
        resolve_sizes("synthetic", "tiny", videos=3)
    with pytest.raises(ValueError, match="tokens_max must be >= tokens_min"):
        resolve_sizes("synthetic", "tiny", tokens_max=1)
    with pytest.raises(ValueError, match="collection 'tvr' has video_dim=768"):
        resolve_sizes("tvr", "tiny", video_dim=64)
    assert resolve_sizes("qvhighlight", "tiny").video_dim == 2816


def test_ensure_synthetic_generates_once_and_never_touches_foreign_data(tmp_path):
    first = ensure_synthetic(tmp_path, "tiny", seed=0, train_videos=4, val_videos=2)
    stamp = first.video_h5.stat().st_mtime_ns
    again = ensure_synthetic(tmp_path, "tiny", seed=0, train_videos=4, val_videos=2)
    assert again.video_h5.stat().st_mtime_ns == stamp
    changed = ensure_synthetic(tmp_path, "tiny", seed=1, train_videos=4, val_videos=2)
    assert read_marker(changed)["seed"] == 1
    assert not list(tmp_path.glob(".synthetic*"))  # no temporary or old directories left
    (tmp_path / "real" / "TextData").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not written by the synthetic generator"):
        ensure_synthetic(tmp_path, "tiny", collection="real")
    with pytest.raises(FileExistsError, match="exists"):
        synthesize(tmp_path, "synthetic", "tiny")
