"""Tiny synthetic training batches in the layout of docs/architecture.md, built with model.merge.

Videos are made of a few "scenes" plus noise, so clip similarities vary from video to video
and the adaptive CBVA sees several segment counts.
"""
from __future__ import annotations

import pytest
import torch

from model.config import MSCConfig
from model.merge import fixed_length, l2_normalize, order_preserving_merge, uniform_clips


def _video_frames(generator: torch.Generator, dim: int, scenes: int, noise: float) -> torch.Tensor:
    """Raw frames [n, dim] of one video: `scenes` constant stretches plus Gaussian noise."""
    length = int(torch.randint(40, 200, (1,), generator=generator))
    centres = torch.randn(scenes, dim, generator=generator)
    scene_of_frame = torch.arange(length) * scenes // length
    return centres[scene_of_frame] + noise * torch.randn(length, dim, generator=generator)


def _queries(generator: torch.Generator, counts: list[int], dim: int, text_len: int) -> dict:
    """Text tokens, mask, end tokens and labels for `counts[v]` captions of each video v."""
    total = sum(counts)
    lengths = torch.randint(3, text_len + 1, (total,), generator=generator)
    tokens = l2_normalize(torch.randn(total, text_len, dim, generator=generator))
    mask = (torch.arange(text_len).unsqueeze(0) < lengths.unsqueeze(1)).float()  # [Q, M]
    tokens = tokens * mask.unsqueeze(-1)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return {"tokens": tokens, "token_mask": mask,
            "end_tokens": tokens[torch.arange(total), lengths - 1],
            "query_labels": labels}


def make_batch(videos: int = 3, captions: int | list[int] = 2, video_dim: int = 32,
               text_dim: int = 24, clip_tokens: str = "optome", text_len: int = 77,
               seed: int = 0) -> dict:
    """A training batch of `videos` videos with `captions` captions each (or a list per video).

    Keys: frames, frame_mask, clips, clip_sizes, clip_labels, tokens, token_mask, end_tokens,
    query_labels, video_ids, cap_ids.
    """
    generator = torch.Generator().manual_seed(seed)
    counts = [captions] * videos if isinstance(captions, int) else list(captions)
    raw = [_video_frames(generator, video_dim, scenes=1 + v % 6, noise=0.05 + 0.6 * (v % 3))
           for v in range(videos)]
    fixed = torch.stack([fixed_length(frames, 128) for frames in raw])  # [B, 128, Dv]
    if clip_tokens == "optome":
        tokens, sizes, labels = order_preserving_merge(fixed)
    else:
        tokens, sizes, labels = uniform_clips(fixed, 32)
    batch = {"frames": l2_normalize(fixed), "frame_mask": torch.ones(videos, 128),
             "clips": l2_normalize(tokens), "clip_sizes": sizes, "clip_labels": labels}
    batch.update(_queries(generator, counts, text_dim, text_len))
    batch["video_ids"] = [f"video{v}" for v in range(videos)]
    batch["cap_ids"] = [f"video{v}#{c}" for v in range(videos) for c in range(counts[v])]
    return batch


def tiny_config(**overrides) -> MSCConfig:
    """An MSCConfig sized for tests (D=32, 2 heads) matching make_batch's feature widths."""
    values = dict(text_dim=24, video_dim=32, hidden=32, heads=2, dropout=0.1)
    values.update(overrides)
    return MSCConfig(**values).validate()


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread (restored after): on the shared 2-core machine two
    OpenMP threads contend with the other processes and run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
