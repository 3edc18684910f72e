"""Datasets and loaders: the batch contract, synth -> validate -> cache -> loader, workers."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from data_tools.datasets import (
    EpochShuffleSampler,
    H5Source,
    TrainVideoDataset,
    collate_train,
    make_loaders,
    pad_tokens,
)
from data_tools.errors import DataValidationError
from data_tools.layout import read_captions
from data_tools.validate import validate_collection


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if torch.is_tensor(value):
            assert value.dtype == b[key].dtype, key
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


@pytest.fixture(scope="module")
def loaders(tiny_root, tmp_path_factory):
    return make_loaders(tiny_root, "synthetic", "optome", batch_size=5, num_workers=0, seed=1,
                        cache_dir=tmp_path_factory.mktemp("cache"))


def test_round_trip_synth_validate_cache_loader(tiny_root, loaders):
    report = validate_collection(tiny_root, "synthetic")
    batches = list(loaders.train)
    seen_videos = [v for batch in batches for v in batch["video_ids"]]
    seen_caps = [c for batch in batches for c in batch["cap_ids"]]
    train = read_captions(tiny_root / "synthetic/TextData/synthetictrain.caption.txt")
    assert sorted(seen_videos) == sorted({c.video_id for c in train})
    assert sorted(seen_caps) == sorted(c.cap_id for c in train) and len(seen_caps) == report.captions["train"]
    batch = batches[0]
    videos, queries = len(batch["video_ids"]), len(batch["cap_ids"])
    longest = int(batch["token_mask"].sum(1).max())  # padded to the batch's longest caption
    shapes = {"frames": ((videos, 128, 32), torch.float32), "frame_mask": ((videos, 128), torch.float32),
              "clips": ((videos, 32, 32), torch.float32), "clip_sizes": ((videos, 32), torch.float32),
              "clip_labels": ((videos, 128), torch.int64), "tokens": ((queries, longest, 32), torch.float32),
              "token_mask": ((queries, longest), torch.float32), "end_tokens": ((queries, 32), torch.float32),
              "query_labels": ((queries,), torch.int64)}
    for key, (shape, dtype) in shapes.items():
        assert (tuple(batch[key].shape), batch[key].dtype) == (shape, dtype), key
    for q, cap_id in enumerate(batch["cap_ids"]):
        assert cap_id.split("#")[0] == batch["video_ids"][batch["query_labels"][q]]
    lengths = batch["token_mask"].sum(1).long()
    rows = torch.arange(queries)
    assert torch.equal(batch["end_tokens"], batch["tokens"][rows, lengths - 1])
    assert torch.all(batch["tokens"][batch["token_mask"] == 0] == 0)
    norms = batch["tokens"][batch["token_mask"] == 1].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
    assert torch.allclose(batch["frames"].norm(dim=-1), torch.ones(videos, 128), atol=1e-4)
    assert torch.allclose(batch["clip_sizes"].sum(1), torch.full((videos,), 128.0))


def test_eval_loaders_cover_the_val_split(tiny_root, loaders):
    videos = [v for batch in loaders.videos for v in batch["video_ids"]]
    queries = [batch for batch in loaders.queries]
    val = read_captions(tiny_root / "synthetic/TextData/syntheticval.caption.txt")
    assert [c for b in queries for c in b["cap_ids"]] == [c.cap_id for c in val]
    assert sorted(videos) == sorted({c.video_id for c in val}) and len(videos) == len(set(videos))
    index = torch.cat([b["video_index"] for b in queries])
    assert [videos[i] for i in index] == [c.video_id for c in val]
    assert (loaders.video_dim, loaders.text_dim) == (32, 32)


def test_workers_and_the_uncached_path_give_the_same_tensors(tiny_root, loaders, tmp_path):
    threaded = make_loaders(tiny_root, "synthetic", "uniform", batch_size=5, num_workers=2, seed=1,
                            cache_dir=loaders.source.path.parent)
    single = make_loaders(tiny_root, "synthetic", "uniform", batch_size=5, num_workers=0, seed=1,
                          cache_dir=loaders.source.path.parent)
    for left, right in zip(threaded.train, single.train, strict=True):
        _equal(left, right)
    for left, right in zip(threaded.queries, single.queries, strict=True):
        _equal(left, right)
    uncached = make_loaders(tiny_root, "synthetic", "optome", batch_size=5, num_workers=2, seed=1,
                            use_cache=False)
    assert isinstance(uncached.source, H5Source)
    for left, right in zip(uncached.videos, loaders.videos, strict=True):
        _equal(left, right)
    first = TrainVideoDataset(uncached.source, "optome")
    cached = TrainVideoDataset(loaders.source, "optome")
    _equal(collate_train([first[3], first[0]]), collate_train([cached[3], cached[0]]))


def test_shuffle_depends_on_seed_and_epoch_only():
    sampler = EpochShuffleSampler(50, seed=3)
    epoch0, epoch1 = list(sampler), list(sampler)
    assert sorted(epoch0) == list(range(50)) and epoch0 != epoch1
    sampler.set_epoch(1)
    assert list(sampler) == epoch1
    assert list(EpochShuffleSampler(50, seed=3)) == epoch0
    assert list(EpochShuffleSampler(50, seed=4)) != epoch0


def test_training_loaders_refuse_bad_data_before_starting(tiny_copy, tmp_path):
    with h5py.File(tiny_copy.video_h5, "a") as handle:
        key = sorted(handle)[0]
        data = handle[key][()]
        data[0, 0] = np.nan
        del handle[key]
        handle.create_dataset(key, data=data)
    with pytest.raises(DataValidationError, match=f"{key}: 1 non-finite value"):
        make_loaders(tiny_copy.root, "synthetic", "optome", 4, 0, 0, tmp_path / "cache")
    with pytest.raises(ValueError, match="clip_tokens='tome'"):
        make_loaders(tiny_copy.root, "synthetic", "tome", 4, 0, 0, tmp_path / "cache")


def test_pad_tokens_pads_to_the_longest_caption_within_the_limit():
    rows = [np.ones((3, 4), np.float32), 2 * np.ones((5, 4), np.float32)]
    tokens, mask, ends = pad_tokens(rows)
    assert tokens.shape == (2, 5, 4) and mask.sum(1).tolist() == [3.0, 5.0]
    assert ends.tolist() == [[1.0] * 4, [2.0] * 4]
    long_rows = [np.arange(90 * 4, dtype=np.float32).reshape(90, 4)]
    tokens, mask, ends = pad_tokens(long_rows, limit=77)
    assert tokens.shape == (1, 77, 4) and torch.equal(ends[0], tokens[0, 76])
