"""An independent, plain MSC network written from the method description (docs/model.md, Network).

One module per tensor of the authors' released network, each branch its own module, named so
that `state_dict()` keys are the released parameter names (`clip_encoder.attn3.self.query.weight`,
`query_input_proj.LayerNorm.bias`, ...). No stacking, no fusing, loops over branches and tokens:
slow and obvious, for checking the project's batched MSC through model.interop. Eval mode only
matters here (dropout layers exist for the names and are inactive in eval mode).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tests.model.loss_oracles import gaussian_prior_loop

BRANCH_WIDTHS = (None, 0.5, 1.0, 5.0, 10.0, 3.0, 0.1, 8.0)


class Projection(nn.Module):
    """LayerNorm(Din) -> Dropout -> Linear(Din -> D) -> ReLU; `net` is [Dropout, Linear]."""

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(in_dim)
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.net(self.LayerNorm(x)))


class Positions(nn.Module):
    """LayerNorm(x + learned position) -> Dropout."""

    def __init__(self, positions: int, hidden: int, dropout: float):
        super().__init__()
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.LayerNorm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = self.position_embeddings.weight[: x.shape[1]]  # [L, D]
        return self.dropout(self.LayerNorm(x + table))


class HeadsAttention(nn.Module):
    """Multi-head attention with separate query, key and value Linears, no output projection."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_mask=None, prior=None,
                size_bias=None) -> torch.Tensor:
        """queries [B, Lq, D], keys [B, L, D], key_mask [B, L] (1 valid), prior [Lq, L],
        size_bias [B, L] -> concatenated head contexts [B, Lq, D]."""
        hidden = queries.shape[-1]
        width = hidden // self.heads
        contexts = []
        for head in range(self.heads):
            cols = slice(head * width, (head + 1) * width)
            q = self.query(queries)[..., cols]  # [B, Lq, dh]
            k = self.key(keys)[..., cols]  # [B, L, dh]
            v = self.value(keys)[..., cols]
            logits = q @ k.transpose(1, 2) / math.sqrt(width)  # [B, Lq, L]
            if prior is not None:
                logits = logits * prior
            if key_mask is not None:
                logits = logits - 10000.0 * (1.0 - key_mask)[:, None, :]
            if size_bias is not None:
                logits = logits + size_bias[:, None, :]
            contexts.append(self.dropout(torch.softmax(logits, dim=-1)) @ v)
        return torch.cat(contexts, dim=-1)


class FeedForward(nn.Module):
    """Linear(D -> W) -> ReLU -> Dropout -> Linear(W -> D)."""

    def __init__(self, hidden: int, inner: int, dropout: float):
        super().__init__()
        self.layer1 = nn.Linear(hidden, inner)
        self.dropout = nn.Dropout(dropout)
        self.layer2 = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.dropout(F.relu(self.layer1(x))))


class AttentionLayer(nn.Module):
    """Post-norm layer: x + Dropout(attention) -> norm1 -> + Dropout(FFN) -> norm2."""

    def __init__(self, hidden: int, heads: int, dropout: float, inner: int):
        super().__init__()
        self.self = HeadsAttention(hidden, heads, dropout)
        self.output = FeedForward(hidden, inner, dropout)
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, queries, keys, key_mask=None, prior=None, size_bias=None):
        attention = self.self
        attended = self.norm1(queries + self.dropout1(
            attention(queries, keys, key_mask, prior, size_bias)))
        return self.norm2(attended + self.dropout2(self.output(attended)))


class GaussianBlock(nn.Module):
    """8 attention layers with Gaussian priors, fused per token by a learned token (GMM block)."""

    def __init__(self, hidden: int, heads: int, dropout: float, length: int, sft_factor: float):
        super().__init__()
        self.length, self.sft_factor = length, sft_factor
        for k in range(len(BRANCH_WIDTHS)):
            setattr(self, f"attn{k}", AttentionLayer(hidden, heads, dropout, 4 * hidden))
        self.ca = AttentionLayer(hidden, heads, dropout, hidden)
        self.layer1 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.layer2 = nn.Linear(hidden, length)

    def forward(self, x, key_mask, token, size_bias=None):
        """x [B, L, D], key_mask [B, L], token [1, 1, D] -> [B, L, D]."""
        outputs = []
        for k, width in enumerate(BRANCH_WIDTHS):
            prior = None if width is None else gaussian_prior_loop(self.length, width).float()
            outputs.append(getattr(self, f"attn{k}")(x, x, key_mask, prior, size_bias))
        tokens = token.expand(x.shape[0], 1, -1)  # [B, 1, D]
        summaries = torch.cat([self.ca(tokens, out, key_mask) for out in outputs], dim=1)
        logits = self.layer2(self.dropout(F.relu(self.layer1(summaries))))  # [B, 8, L]
        weights = torch.softmax(logits.transpose(1, 2) / self.sft_factor, dim=-1)  # [B, L, 8]
        fused = torch.zeros_like(x)
        for k, out in enumerate(outputs):
            fused = fused + weights[..., k:k + 1] * out
        return fused


class ReferenceMSC(nn.Module):
    """The released network's structure and names, written plainly."""

    def __init__(self, text_dim: int, video_dim: int, hidden: int, heads: int, text_len: int,
                 frame_len: int, sft_factor: float, dropout: float = 0.1,
                 input_dropout: float = 0.1):
        super().__init__()
        self.query_pos_embed = Positions(text_len, hidden, input_dropout)
        self.clip_pos_embed = Positions(frame_len, hidden, input_dropout)
        self.frame_pos_embed = Positions(frame_len, hidden, input_dropout)
        self.query_input_proj = Projection(text_dim, hidden, input_dropout)
        self.query_encoder = AttentionLayer(hidden, heads, dropout, 4 * hidden)
        self.clip_input_proj = Projection(video_dim, hidden, input_dropout)
        self.clip_encoder = GaussianBlock(hidden, heads, dropout, 32, sft_factor)
        self.frame_input_proj = Projection(video_dim, hidden, input_dropout)
        self.frame_encoder_1 = GaussianBlock(hidden, heads, dropout, frame_len, sft_factor)
        self.modular_vector_mapping = nn.Linear(hidden, 1, bias=False)
        self.weight_token = nn.Parameter(torch.randn(1, 1, hidden))
        self.vproj_clip = nn.Linear(hidden, hidden)

    def encode_queries(self, tokens, mask):
        """tokens [Q, M, Dt], mask [Q, M] -> pooled queries [Q, D]."""
        x = self.query_pos_embed(self.query_input_proj(tokens))
        x = self.query_encoder(x, x, mask)  # [Q, M, D]
        pooled = []
        for q in range(x.shape[0]):
            valid = mask[q] > 0
            attention = torch.softmax(self.modular_vector_mapping(x[q, valid]).squeeze(-1), dim=0)
            pooled.append(attention @ x[q, valid])
        return torch.stack(pooled)

    def encode_clips(self, clips, sizes):
        """clip features [B, 32, Dv], sizes [B, 32] -> [B, 32, D] (no key mask, size bias)."""
        x = self.clip_pos_embed(self.clip_input_proj(clips))
        return self.clip_encoder(x, None, self.weight_token, torch.log(sizes))

    def encode_frames(self, frames, mask):
        """frames [B, 128, Dv], mask [B, 128] -> [B, 128, D], masked rows 0."""
        x = self.frame_pos_embed(self.frame_input_proj(frames))
        return self.frame_encoder_1(x, mask, self.weight_token) * mask.unsqueeze(-1)

    def scores(self, tokens, token_mask, clips, sizes, frames, frame_mask) -> dict:
        """clip / frame scores [Q, B], cosine and raw, and the fused 0.4 / 0.6 score."""
        query = self.encode_queries(tokens, token_mask)
        encoded = {"clip": self.encode_clips(clips, sizes), "frame": self.encode_frames(frames, frame_mask)}
        result = {}
        for name, tokens_of_video in encoded.items():
            raw = torch.stack([torch.stack([(video @ q).max() for video in tokens_of_video])
                               for q in query])
            unit = F.normalize(tokens_of_video, dim=-1)
            cosine = torch.stack([torch.stack([(video @ F.normalize(q, dim=0)).max()
                                               for video in unit]) for q in query])
            result[f"{name}_raw"], result[name] = raw, cosine
        result["fused"] = 0.4 * result["clip"] + 0.6 * result["frame"]
        return result


def randomised(model: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    """Every tensor shifted by scale * N(0, 1) noise, so no bias is 0 and no LayerNorm 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return model
