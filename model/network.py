"""The MSC network (docs/model.md): query, clip and frame encoders, scores, alignment head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import MSCConfig
from model.layers import (
    POOL_PENALTY,
    GaussianMixtureBlock,
    InputProjection,
    MultiBranchAttentionLayer,
    PositionalEmbedding,
    StackedLayerNorm,
    StackedLinear,
)

INIT_STD = 0.02


class MSC(nn.Module):
    """MSC: a text encoder and a two-branch (clip, frame) video encoder.

    The learned fusion token `weight_token` [1, 1, D] is one parameter shared by the clip and
    frame GMM blocks, drawn from N(0, 1); each block has its own cross-attention layer, shared by
    its branches. The clip stream's positional table has `frame_len` positions, as in the
    released network.
    """

    def __init__(self, cfg: MSCConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        hidden, heads, dropout = cfg.hidden, cfg.heads, cfg.dropout
        input_dropout = cfg.input_dropout_rate
        self.query_proj = InputProjection(cfg.text_dim, hidden, input_dropout)
        self.query_pos = PositionalEmbedding(cfg.text_len, hidden, input_dropout)
        self.query_layer = MultiBranchAttentionLayer(hidden, heads, dropout)
        self.query_pool = nn.Linear(hidden, 1, bias=False)
        self.clip_proj = InputProjection(cfg.video_dim, hidden, input_dropout)
        self.clip_pos = PositionalEmbedding(cfg.frame_len, hidden, input_dropout)
        self.clip_block = GaussianMixtureBlock(hidden, heads, dropout, cfg.gauss_widths,
                                               cfg.clip_len, cfg.sft_factor)
        self.frame_proj = InputProjection(cfg.video_dim, hidden, input_dropout)
        self.frame_pos = PositionalEmbedding(cfg.frame_len, hidden, input_dropout)
        self.frame_block = GaussianMixtureBlock(hidden, heads, dropout, cfg.gauss_widths,
                                                cfg.frame_len, cfg.sft_factor)
        self.weight_token = nn.Parameter(torch.randn(1, 1, hidden))  # N(0, 1), kept by the init
        self.alignment = nn.Linear(hidden, hidden)
        self.apply(_init_weights)

    def encode_queries(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled query embeddings [Q, D] from text tokens [Q, M, Dt] and their mask [Q, M]."""
        x = self.query_pos(self.query_proj(tokens))  # [Q, M, D]
        x = self.query_layer(x, mask)[0]  # [Q, M, D]
        logits = self.query_pool(x).squeeze(-1).masked_fill(mask == 0, POOL_PENALTY)  # [Q, M]
        weights = torch.softmax(logits, dim=-1)
        return torch.einsum("qm,qmd->qd", weights, x)

    def encode_clips(self, clips: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Encoded clip tokens [B, 32, D] from clip features [B, 32, Dv] and sizes [B, 32]."""
        x = self.clip_pos(self.clip_proj(clips))  # [B, 32, D]
        mask = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        return self.clip_block(x, mask, self.weight_token, size_bias=torch.log(sizes))

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoded frames [B, 128, D] from frame features [B, 128, Dv] and mask [B, 128];
        masked rows are 0."""
        x = self.frame_pos(self.frame_proj(frames))  # [B, 128, D]
        return self.frame_block(x, mask, self.weight_token) * mask.unsqueeze(-1)

    def align(self, x: torch.Tensor) -> torch.Tensor:
        """The shared alignment projection Linear(D -> D) used by CBVA: [..., D] -> [..., D]."""
        return self.alignment(x)

    def forward(self, batch: dict) -> dict:
        """Encode a batch (docs/architecture.md keys) -> dict(query, clips, frames)."""
        return {
            "query": self.encode_queries(batch["tokens"], batch["token_mask"]),
            "clips": self.encode_clips(batch["clips"], batch["clip_sizes"]),
            "frames": self.encode_frames(batch["frames"], batch["frame_mask"]),
        }


def similarity(query: torch.Tensor, clips: torch.Tensor, frames: torch.Tensor,
               normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip and frame scores [Q, B]: max over tokens of cos (normalize) or of raw dot products."""
    if normalize:
        query, clips, frames = (F.normalize(t, dim=-1) for t in (query, clips, frames))
    clip_scores = torch.einsum("qd,btd->qbt", query, clips).amax(dim=-1)  # [Q, B]
    frame_scores = torch.einsum("qd,bfd->qbf", query, frames).amax(dim=-1)  # [Q, B]
    return clip_scores, frame_scores


def fused_scores(clip_scores: torch.Tensor, frame_scores: torch.Tensor,
                 cfg: MSCConfig) -> torch.Tensor:
    """Retrieval score [Q, B] = clip_weight * clip + frame_weight * frame (0.4 / 0.6)."""
    return cfg.clip_weight * clip_scores + cfg.frame_weight * frame_scores


def _init_weights(module: nn.Module) -> None:
    """Linear/Embedding/stacked weights N(0, 0.02), biases 0, LayerNorms weight 1 bias 0."""
    if isinstance(module, (nn.Linear, nn.Embedding, StackedLinear)):
        nn.init.normal_(module.weight, std=INIT_STD)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, StackedLayerNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
