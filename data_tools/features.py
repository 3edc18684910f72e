"""Model inputs computed from raw features with `model.merge`'s batched ops (docs/model.md, Inputs).

Frames: `fixed_length` per video (n varies), stacked, then L2-normalised. Clip tokens: OP-ToMe
(or uniform groups) on the stacked *un-normalised* fixed frames, L2-normalised after merging.
Text: rows truncated to TEXT_LEN and L2-normalised.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from model.merge import (
    OPTOME_TARGETS,
    fixed_length,
    l2_normalize,
    order_preserving_merge,
    uniform_clips,
)

FRAME_LEN = 128
CLIP_LEN = 32
TEXT_LEN = 77
CLIP_TOKENS = ("optome", "uniform")
SETTINGS = {"frame_len": FRAME_LEN, "clip_len": CLIP_LEN, "text_len": TEXT_LEN,
            "optome_targets": list(OPTOME_TARGETS), "eps": 1e-5, "dtype": "float32"}


@contextmanager
def one_thread():
    """Run torch ops on one thread (restored after): the ops here are small, and extra threads
    only spin when the machine is busy (20x slower on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_clip_tokens(clip_tokens: str) -> str:
    """Return `clip_tokens` if it names a clip variant; raises ValueError otherwise."""
    if clip_tokens not in CLIP_TOKENS:
        raise ValueError(f"clip_tokens={clip_tokens!r}; expected one of {CLIP_TOKENS}")
    return clip_tokens


def stack_fixed_length(raw: list[np.ndarray]) -> torch.Tensor:
    """Un-normalised fixed-length frames of each video, stacked. [c, 128, Dv]"""
    return torch.stack([fixed_length(torch.from_numpy(np.asarray(f, dtype=np.float32)), FRAME_LEN)
                        for f in raw])


def clip_tokens_of(fixed: torch.Tensor, clip_tokens: str):
    """Clip features of `fixed[c, 128, Dv]`: (clips[c, 32, Dv] normalised, sizes[c, 32], labels[c, 128])."""
    if check_clip_tokens(clip_tokens) == "optome":
        tokens, sizes, labels = order_preserving_merge(fixed, OPTOME_TARGETS)
    else:
        tokens, sizes, labels = uniform_clips(fixed, CLIP_LEN)
    return l2_normalize(tokens), sizes.float(), labels.long()


def video_inputs(raw: list[np.ndarray], clip_tokens: str) -> dict[str, np.ndarray]:
    """Every video key of the batch for a list of raw `[n, Dv]` frame arrays (stacked, numpy)."""
    with one_thread():
        fixed = stack_fixed_length(raw)  # [c, 128, Dv]
        clips, sizes, labels = clip_tokens_of(fixed, clip_tokens)
        frames = l2_normalize(fixed)
    return {"frames": frames.numpy(), "clips": clips.numpy(),
            "clip_sizes": sizes.numpy(), "clip_labels": labels.numpy()}


def text_inputs(raw: np.ndarray) -> np.ndarray:
    """Text tokens truncated to TEXT_LEN rows, each L2-normalised. [min(m, 77), Dt]"""
    tokens = torch.from_numpy(np.asarray(raw[:TEXT_LEN], dtype=np.float32))
    with one_thread():
        return l2_normalize(tokens).numpy()
