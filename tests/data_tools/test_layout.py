"""Release layout: paths, caption parsing, the ActivityNet `v_` rule."""
from __future__ import annotations

import pytest

from data_tools.errors import DataValidationError
from data_tools.layout import Collection, feature_key, read_captions, video_id_of


def test_paths_follow_the_release_layout(tmp_path):
    tvr = Collection(tmp_path, "tvr")
    assert tvr.caption_file("train") == tmp_path / "tvr/TextData/tvrtrain.caption.txt"
    assert tvr.caption_file("val") == tmp_path / "tvr/TextData/tvrval.caption.txt"
    assert tvr.video_h5 == tmp_path / "tvr/FeatureData/tvr_clip_L14.h5"
    assert tvr.text_h5 == tmp_path / "tvr/TextData/tvr_clip_L14.h5"
    assert tvr.known_widths() == (768, 768)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        tvr.caption_file("test")


def test_qvhighlight_uses_its_own_file_names(tmp_path):
    qvh = Collection(tmp_path, "qvhighlight")
    assert qvh.video_h5.name == "qvhighlight_slowfast_clip.h5"
    assert qvh.text_h5 == tmp_path / "qvhighlight/TextData/qvhighlight_slowfast_clip_text.h5"
    assert qvh.known_widths() == (2816, 512)
    assert Collection(tmp_path, "mine").known_widths() is None


def test_activitynet_feature_keys_drop_the_v_prefix():
    assert feature_key("activitynet", "v_abc123") == "abc123"
    assert feature_key("activitynet", "abc123") == "abc123"
    assert feature_key("tvr", "v_abc123") == "v_abc123"


def test_read_captions_splits_id_and_text(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("v_x#enc#0 a man  runs fast\n\nclip_7 \nfriends_s01#1#2 two # signs\n")
    captions = read_captions(path)
    assert [(c.cap_id, c.video_id, c.text, c.line) for c in captions] == [
        ("v_x#enc#0", "v_x", "a man  runs fast", 1),
        ("clip_7", "clip_7", "", 3),
        ("friends_s01#1#2", "friends_s01", "two # signs", 4),
    ]
    assert video_id_of("a#b#c") == "a"


def test_read_captions_names_a_missing_or_undecodable_file(tmp_path):
    with pytest.raises(DataValidationError, match="nope.txt: -: caption file not found"):
        read_captions(tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"id\xff\xfe caption\n")
    with pytest.raises(DataValidationError, match="bad.txt: -: unreadable caption file"):
        read_captions(bad)
