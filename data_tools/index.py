"""Which videos and captions a collection has, in a fixed order shared by the cache and loaders.

Captions: the train file's lines, then the val file's lines (file order). Videos: in order of
first appearance over those captions. Rows index both lists.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_tools.layout import Collection, read_captions


@dataclass(frozen=True)
class Index:
    """Videos, captions and the split of a collection."""

    video_ids: tuple[str, ...]
    cap_ids: tuple[str, ...]
    caption_video: np.ndarray  # int64 [C]: video row of each caption
    train_captions: int  # captions [0, train_captions) are train, the rest val

    @classmethod
    def from_collection(cls, collection: Collection) -> "Index":
        """Read both caption files; raises DataValidationError when one cannot be read."""
        train = read_captions(collection.caption_file("train"))
        val = read_captions(collection.caption_file("val"))
        rows: dict[str, int] = {}
        for caption in train + val:
            rows.setdefault(caption.video_id, len(rows))
        caption_video = np.array([rows[c.video_id] for c in train + val], dtype=np.int64)
        return cls(tuple(rows), tuple(c.cap_id for c in train + val), caption_video, len(train))

    @classmethod
    def from_dict(cls, payload: dict) -> "Index":
        return cls(tuple(payload["video_ids"]), tuple(payload["cap_ids"]),
                   np.asarray(payload["caption_video"], dtype=np.int64), int(payload["train_captions"]))

    def to_dict(self) -> dict:
        return {"video_ids": list(self.video_ids), "cap_ids": list(self.cap_ids),
                "caption_video": self.caption_video.tolist(), "train_captions": self.train_captions}

    def caption_rows(self, split: str) -> np.ndarray:
        """Caption rows of "train" or "val"; raises ValueError for another split."""
        if split == "train":
            return np.arange(self.train_captions)
        if split == "val":
            return np.arange(self.train_captions, len(self.cap_ids))
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'val'")

    def videos_with_captions(self, split: str) -> list[tuple[int, np.ndarray]]:
        """(video row, its caption rows in this split) for each video of the split, in order."""
        rows = self.caption_rows(split)
        groups: dict[int, list[int]] = {}
        for row in rows:
            groups.setdefault(int(self.caption_video[row]), []).append(int(row))
        return [(video, np.asarray(caps, dtype=np.int64)) for video, caps in groups.items()]
