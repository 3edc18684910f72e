"""One training step as the authors' released code runs it: the timing baseline of bench_step.

Forward (bench/released_network.py over the per-branch reference network of
tests/model/released_reference.py, which holds the same weights as our MSC), then, as the
released model's forward does: the teacher end tokens gathered one query at a time with `int()`,
the four score matrices, the query-label dictionary, the alignment projection and the per-video
diversity ratios; then the loop losses of bench/released_losses.py, backward, and the
per-parameter optimiser of bench/released_optim.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.released_losses import diversity_ratios, group_queries, released_loss
from bench.released_network import encode_clips, encode_frames, encode_queries
from model.config import MSCConfig
from model.interop import to_authors_state_dict
from model.network import MSC
from tests.model.released_reference import ReferenceMSC


def build_reference(model: MSC) -> ReferenceMSC:
    """The per-branch reference network holding `model`'s weights (through the released names).

    Raises RuntimeError when the state dicts do not match (a mapping out of date).
    """
    cfg = model.cfg
    reference = ReferenceMSC(text_dim=cfg.text_dim, video_dim=cfg.video_dim, hidden=cfg.hidden,
                             heads=cfg.heads, text_len=cfg.text_len, frame_len=cfg.frame_len,
                             sft_factor=cfg.sft_factor, dropout=cfg.dropout,
                             input_dropout=cfg.input_dropout_rate)
    reference.load_state_dict(to_authors_state_dict(model))
    return reference.to(next(model.parameters()).device)


def released_batch(batch: dict) -> dict:
    """The batch as the released loader hands it over: query labels as a Python list of ints
    (read once here, outside any timed step)."""
    return {**batch, "query_labels": batch["query_labels"].tolist()}


def last_token_features(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each query's last valid token [Q, Dt], gathered in a Python loop with `int()` per query."""
    lengths = mask.sum(dim=1)  # [Q]
    rows = [tokens[index, int(lengths[index] - 1), :] for index in range(tokens.size(0))]
    return torch.stack(rows, dim=0)


def max_scores(query: torch.Tensor, context: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Scores [Q, B]: the max over each video's tokens of the (cosine) dot product."""
    if normalize:
        query, context = F.normalize(query, dim=-1), F.normalize(context, dim=-1)
    per_token = torch.matmul(context, query.t()).permute(2, 1, 0)  # [Q, L, B]
    return torch.max(per_token, dim=1)[0]


def released_forward(net: ReferenceMSC, cfg: MSCConfig, batch: dict) -> dict:
    """Everything the released forward hands to its loss, keyed for `released_loss`.

    `batch` is a `released_batch` (query labels a list); raises KeyError for a missing key.
    """
    sizes = batch["clip_sizes"].unsqueeze(-1)  # [B, 32, 1]
    clips = encode_clips(net, batch["clips"], sizes)  # [B, 32, D]
    frames = encode_frames(net, batch["frames"], batch["frame_mask"])  # [B, 128, D]
    query = encode_queries(net, batch["tokens"], batch["token_mask"])  # [Q, D]
    labels = batch["query_labels"]
    return {
        "query": query,
        "end_tokens": last_token_features(batch["tokens"], batch["token_mask"]),
        "cos_clip": max_scores(query, clips, normalize=True),
        "raw_clip": max_scores(query, clips, normalize=False),
        "cos_frame": max_scores(query, frames, normalize=True),
        "raw_frame": max_scores(query, frames, normalize=False),
        "labels": labels,
        "groups": group_queries(labels),
        "aligned_clips": net.vproj_clip(clips),
        "aligned_frames": net.vproj_clip(frames),
        "ratios": diversity_ratios(batch["clips"], cfg.sim_thr),
        "clip_labels": batch["clip_labels"],
        "clip_sizes": sizes,
        "clip_feats": batch["clips"],
    }


def released_step(net: ReferenceMSC, cfg: MSCConfig, optimizer, batch: dict,
                  hard: bool = False) -> dict:
    """One released-algorithm training step: forward, loop losses, backward, update.
    Returns the loss terms."""
    optimizer.zero_grad()
    total, terms = released_loss(cfg, released_forward(net, cfg, batch), hard)
    total.backward()
    optimizer.step()
    return terms
