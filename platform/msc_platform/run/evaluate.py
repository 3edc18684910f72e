"""Chunked retrieval evaluation: fused/clip/frame R@K and SumR, collapse diagnostics, ranks.

Videos and queries are encoded in batches; each chunk of queries is scored against all videos
and only the rank of its ground-truth video is kept, so a TVR-sized set (10,895 queries x
2,179 videos) never holds a full score matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from model.config import MSCConfig
from model.metrics import diff_norm, gt_ranks, recall_from_ranks, spearman_collapse
from model.network import fused_scores, similarity
from msc_platform.run.runtime import autocast, to_device

KS = (1, 5, 10, 100)
BRANCHES = ("fused", "clip", "frame")


@dataclass
class EncodedVideos:
    """Encoded evaluation videos, in loader order."""

    clips: torch.Tensor  # [V, 32, D]
    frames: torch.Tensor  # [V, 128, D]
    video_ids: list[str]


@dataclass
class EncodedQueries:
    """Encoded evaluation queries, in loader order."""

    query: torch.Tensor  # [Q, D]
    end_tokens: torch.Tensor  # [Q, Dt]
    video_index: torch.Tensor  # long [Q], row of the query's video in EncodedVideos
    cap_ids: list[str]


@torch.no_grad()
def encode_videos(model, loader, device: torch.device, bf16: bool = False) -> EncodedVideos:
    """Encode every video of `loader` (batches with clips, clip_sizes, frames, frame_mask, video_ids)."""
    clips, frames, video_ids = [], [], []
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, bf16):
            clips.append(model.encode_clips(batch["clips"], batch["clip_sizes"]).float())
            frames.append(model.encode_frames(batch["frames"], batch["frame_mask"]).float())
        video_ids.extend(batch["video_ids"])
    return EncodedVideos(torch.cat(clips), torch.cat(frames), video_ids)


@torch.no_grad()
def encode_queries(model, loader, device: torch.device, bf16: bool = False) -> EncodedQueries:
    """Encode every query of `loader` (tokens, token_mask, end_tokens, video_index, cap_ids)."""
    queries, ends, index, cap_ids = [], [], [], []
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, bf16):
            queries.append(model.encode_queries(batch["tokens"], batch["token_mask"]).float())
        ends.append(batch["end_tokens"].float())
        index.append(batch["video_index"])
        cap_ids.extend(batch["cap_ids"])
    return EncodedQueries(torch.cat(queries), torch.cat(ends), torch.cat(index), cap_ids)


@torch.no_grad()
def rank_chunks(queries: EncodedQueries, videos: EncodedVideos, cfg: MSCConfig,
                chunk: int) -> dict[str, torch.Tensor]:
    """Rank of each query's video among all videos, {branch: long [Q]}, `chunk` queries at a time.

    Raises ValueError when a query's video_index points outside the video list.
    """
    n_videos = len(videos.video_ids)
    index = queries.video_index
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_videos):
        raise ValueError(f"query video_index out of range [0, {n_videos}): "
                         f"min {int(index.min())}, max {int(index.max())}")
    ranks = {branch: [] for branch in BRANCHES}
    # cosine = dot product of unit vectors: normalise once here, not once per chunk
    clips, frames = F.normalize(videos.clips, dim=-1), F.normalize(videos.frames, dim=-1)
    for start in range(0, index.numel(), chunk):
        q = F.normalize(queries.query[start:start + chunk], dim=-1)  # [q, D]
        gt = index[start:start + chunk]  # [q]
        clip_scores, frame_scores = similarity(q, clips, frames, normalize=False)  # [q, V]
        scores = {"fused": fused_scores(clip_scores, frame_scores, cfg),
                  "clip": clip_scores, "frame": frame_scores}
        for branch in BRANCHES:
            ranks[branch].append(gt_ranks(scores[branch], gt).cpu())
    return {branch: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
            for branch, parts in ranks.items()}


def recall_metrics(ranks: dict[str, torch.Tensor]) -> dict[str, float]:
    """R@K and SumR per branch; fused keys bare ("SumR"), others prefixed ("clip/SumR")."""
    metrics = {}
    for branch in BRANCHES:
        prefix = "" if branch == "fused" else f"{branch}/"
        for key, value in recall_from_ranks(ranks[branch], KS).items():
            metrics[prefix + key] = float(value)
    return metrics


@torch.no_grad()
def diagnostics(queries: EncodedQueries, videos: EncodedVideos) -> dict[str, float]:
    """Diff.Norm of pooled queries (grouped by video) and of encoded clip tokens, Spearman x100."""
    n_videos, tokens, width = videos.clips.shape
    token_groups = torch.arange(n_videos, device=videos.clips.device).repeat_interleave(tokens)
    return {
        "diffnorm_text": float(diff_norm(queries.query, queries.video_index)),
        "diffnorm_video": float(diff_norm(videos.clips.reshape(-1, width), token_groups)),
        "spearman": float(spearman_collapse(queries.query, queries.end_tokens)),
    }


def ranks_table(ranks: dict[str, torch.Tensor], queries: EncodedQueries,
                videos: EncodedVideos) -> pd.DataFrame:
    """Per-query ranks: columns cap_id, video_id, rank_fused, rank_clip, rank_frame."""
    index = queries.video_index.cpu().tolist()
    return pd.DataFrame({
        "cap_id": queries.cap_ids,
        "video_id": [videos.video_ids[i] for i in index],
        **{f"rank_{branch}": ranks[branch].numpy() for branch in BRANCHES},
    })


@torch.no_grad()
def evaluate_loaders(model, video_loader, query_loader, cfg: MSCConfig, *,
                     device: torch.device | str = "cpu", chunk: int = 256,
                     bf16: bool = False) -> dict:
    """Evaluate `model` on one split: {"metrics": {name: float}, "ranks": DataFrame}.

    Metric names: R@1, R@5, R@10, R@100, SumR (fused), clip/..., frame/..., diffnorm_text,
    diffnorm_video, spearman. The model is put in eval mode and restored afterwards.
    Raises ValueError when the loaders are empty or a query's video is missing.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        videos = encode_videos(model, video_loader, device, bf16)
        queries = encode_queries(model, query_loader, device, bf16)
    finally:
        model.train(was_training)
    if not videos.video_ids or not queries.cap_ids:
        raise ValueError(f"evaluation needs videos and queries, got {len(videos.video_ids)} "
                         f"videos and {len(queries.cap_ids)} queries")
    ranks = rank_chunks(queries, videos, cfg, chunk)
    metrics = recall_metrics(ranks) | diagnostics(queries, videos)
    return {"metrics": metrics, "ranks": ranks_table(ranks, queries, videos)}


def evaluate(model, loaders, cfg, *, device: torch.device | str = "cpu") -> dict:
    """Evaluate on the validation loaders of `loaders` with the chunk sizes of ExperimentConfig `cfg`.

    `loaders` has `val_videos` and `val_queries` (data_tools' make_loaders result, or
    msc_platform.run.data.TrainingData). See evaluate_loaders for the result.
    """
    return evaluate_loaders(model, loaders.val_videos, loaders.val_queries, cfg.model,
                            device=device, chunk=cfg.train.eval_query_chunk,
                            bf16=cfg.train.bf16)


def metric_name(key: str) -> str:
    """MLflow spelling of an evaluation key: MLflow refuses '@', so "R@1" is logged as "R1"."""
    return key.replace("R@", "R")


def logged_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """An evaluation's metrics under their MLflow names: val/R1 ... val/frame/SumR, diag/...."""
    row = {}
    for key, value in metrics.items():
        if key.startswith(("diffnorm", "spearman")):
            row[f"diag/{key}"] = value
        else:
            row[f"val/{metric_name(key)}"] = value
    return row
