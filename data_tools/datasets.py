"""Torch datasets, collation and loaders for training (a video with all its captions) and
evaluation (the val videos; the val queries).

A dataset reads from a *source*: the `FeatureCache` (memory-mapped, the normal path) or an
`H5Source` (computes fixed length + clip tokens per video from the HDF5 files, the uncached
reference path; its HDF5 handles are opened lazily, once in each worker process).
Both give identical items, so batches do not depend on the source or on `num_workers`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data_tools.cache import FeatureCache, build_or_load
from data_tools.features import TEXT_LEN, check_clip_tokens, text_inputs, video_inputs
from data_tools.index import Index
from data_tools.layout import Collection, feature_key


class H5Source:
    """Model inputs computed per item from the source HDF5 files (no cache, no validation)."""

    def __init__(self, root, collection: str):
        self.collection = Collection(root, collection)
        self.index = Index.from_collection(self.collection)
        self._files: tuple[h5py.File, h5py.File] | None = None
        self._pid = -1

    def __getstate__(self):
        return {"root": self.collection.root, "name": self.collection.name, "index": self.index}

    def __setstate__(self, state):
        self.collection = Collection(state["root"], state["name"])
        self.index = state["index"]
        self._files, self._pid = None, -1

    def files(self) -> tuple[h5py.File, h5py.File]:
        """(video file, text file), opened on first use in this process."""
        if self._files is None or self._pid != os.getpid():
            self._files = (h5py.File(self.collection.video_h5, "r"), h5py.File(self.collection.text_h5, "r"))
            self._pid = os.getpid()
        return self._files

    def video(self, row: int, clip_tokens: str) -> dict[str, np.ndarray]:
        """Video keys of one video row, computed now."""
        key = feature_key(self.collection.name, self.index.video_ids[row])
        stacked = video_inputs([self.files()[0][key][()]], clip_tokens)
        return {name: value[0] for name, value in stacked.items()}

    def tokens(self, cap_row: int) -> np.ndarray:
        """Normalised, truncated text tokens of one caption row. [m, Dt]"""
        return text_inputs(self.files()[1][self.index.cap_ids[cap_row]][()])


class TrainVideoDataset(Dataset):
    """Item i: the i-th video of `split` with all its captions of that split."""

    def __init__(self, source, clip_tokens: str = "optome", split: str = "train"):
        self.source = source
        self.clip_tokens = check_clip_tokens(clip_tokens)
        self.groups = source.index.videos_with_captions(split)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict:
        video_row, cap_rows = self.groups[i]
        item = self.source.video(video_row, self.clip_tokens)
        item["video_id"] = self.source.index.video_ids[video_row]
        item["cap_ids"] = [self.source.index.cap_ids[row] for row in cap_rows]
        item["tokens"] = [self.source.tokens(row) for row in cap_rows]
        return item


class EvalVideoDataset(Dataset):
    """Item i: the i-th video referenced by the val captions (order of first appearance)."""

    def __init__(self, source, clip_tokens: str = "optome"):
        self.source = source
        self.clip_tokens = check_clip_tokens(clip_tokens)
        self.rows = [video for video, _ in source.index.videos_with_captions("val")]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        item = self.source.video(self.rows[i], self.clip_tokens)
        item["video_id"] = self.source.index.video_ids[self.rows[i]]
        return item


class EvalQueryDataset(Dataset):
    """Item i: the i-th val caption, with `video_index` = its video's row in EvalVideoDataset."""

    def __init__(self, source):
        self.source = source
        self.rows = source.index.caption_rows("val")
        videos = [video for video, _ in source.index.videos_with_captions("val")]
        position = {video: i for i, video in enumerate(videos)}
        self.video_index = [position[int(source.index.caption_video[row])] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = int(self.rows[i])
        return {"tokens": self.source.tokens(row), "cap_id": self.source.index.cap_ids[row],
                "video_index": self.video_index[i]}


def _stack(items: list[dict], key: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([item[key] for item in items]))


def pad_tokens(token_list: list[np.ndarray], limit: int = TEXT_LEN):
    """Zero-pad normalised tokens to the longest caption (at most `limit` rows), as the released
    loader does: (tokens[Q, L, Dt], mask[Q, L], end_tokens[Q, Dt]). Padded rows are masked
    keys whose attention weight is exactly 0, so the length changes no score, only the work."""
    dim = token_list[0].shape[1]
    length = min(limit, max(len(rows) for rows in token_list))
    tokens = np.zeros((len(token_list), length, dim), dtype=np.float32)  # [Q, L, Dt]
    mask = np.zeros((len(token_list), length), dtype=np.float32)  # [Q, L]
    for q, rows in enumerate(token_list):
        tokens[q, :len(rows)] = rows[:length]
        mask[q, :len(rows)] = 1.0
    ends = np.stack([rows[min(len(rows), length) - 1] for rows in token_list])  # [Q, Dt]
    return torch.from_numpy(tokens), torch.from_numpy(mask), torch.from_numpy(ends.astype(np.float32))


def collate_videos(items: list[dict]) -> dict:
    """frames, frame_mask, clips, clip_sizes, clip_labels, video_ids of a list of video items."""
    frames = _stack(items, "frames")  # [B, 128, Dv]
    return {"frames": frames, "frame_mask": torch.ones(frames.shape[:2]),
            "clips": _stack(items, "clips"), "clip_sizes": _stack(items, "clip_sizes"),
            "clip_labels": _stack(items, "clip_labels"),
            "video_ids": [item["video_id"] for item in items]}


def collate_train(items: list[dict]) -> dict:
    """A training batch: the video keys plus every caption of those videos (architecture.md)."""
    batch = collate_videos(items)
    token_list = [rows for item in items for rows in item["tokens"]]
    batch["tokens"], batch["token_mask"], batch["end_tokens"] = pad_tokens(token_list)
    batch["query_labels"] = torch.tensor([b for b, item in enumerate(items) for _ in item["tokens"]],
                                         dtype=torch.int64)
    batch["cap_ids"] = [cap_id for item in items for cap_id in item["cap_ids"]]
    return batch


def collate_queries(items: list[dict]) -> dict:
    """tokens, token_mask, end_tokens, cap_ids, video_index of a list of query items."""
    tokens, mask, ends = pad_tokens([item["tokens"] for item in items])
    return {"tokens": tokens, "token_mask": mask, "end_tokens": ends,
            "cap_ids": [item["cap_id"] for item in items],
            "video_index": torch.tensor([item["video_index"] for item in items], dtype=torch.int64)}


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch): resumable and reproducible.

    Each pass uses the current epoch, then advances it; `set_epoch(e)` pins the next pass to e.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        self.epoch += 1
        return iter(order.tolist())


@dataclass
class Loaders:
    """The three loaders of a run and the source they read."""

    train: DataLoader
    videos: DataLoader
    queries: DataLoader
    source: FeatureCache | H5Source

    @property
    def val_videos(self) -> DataLoader:
        """Alias of `videos` (the name msc_platform uses)."""
        return self.videos

    @property
    def val_queries(self) -> DataLoader:
        """Alias of `queries` (the name msc_platform uses)."""
        return self.queries

    @property
    def video_dim(self) -> int:
        return int(self.videos.dataset[0]["frames"].shape[-1])

    @property
    def text_dim(self) -> int:
        return int(self.queries.dataset[0]["tokens"].shape[-1])


def _loader(dataset, batch_size: int, num_workers: int, collate, sampler=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, persistent_workers=num_workers > 0)


def make_loaders(root, collection: str, clip_tokens: str = "optome", batch_size: int = 128,
                 num_workers: int = 0, seed: int = 0, cache_dir=None, *,
                 eval_batch_size: int | None = None, use_cache: bool = True) -> Loaders:
    """Validated, cached loaders of `{root}/{collection}`: train (shuffled per seed and epoch),
    val videos and val queries (fixed order).

    Builds or loads the feature cache (`build_or_load`, which validates first and raises
    DataValidationError on bad data). `use_cache=False` computes every item from the HDF5 files
    instead (slow; no validation). Raises ValueError for a bad `clip_tokens` or batch size.
    """
    check_clip_tokens(clip_tokens)
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    source = build_or_load(root, collection, cache_dir) if use_cache else H5Source(root, collection)
    train = TrainVideoDataset(source, clip_tokens)
    eval_batch = eval_batch_size or batch_size
    return Loaders(
        train=_loader(train, batch_size, num_workers, collate_train, EpochShuffleSampler(len(train), seed)),
        videos=_loader(EvalVideoDataset(source, clip_tokens), eval_batch, num_workers, collate_videos),
        queries=_loader(EvalQueryDataset(source), eval_batch, num_workers, collate_queries),
        source=source)
