"""The released network's forward algorithm over the per-branch reference network's modules.

`tests/model/released_reference.py` holds one module per tensor of the released network, under
the released names (so `model.interop.to_authors_state_dict` loads our weights into it). Its own
forward is a plain test oracle (a loop per head and per query); the functions here run the
released code's algorithm over the same modules instead: query, key and value once per layer,
heads by view, the Gaussian prior rebuilt by tensor ops on every call, the eight branches as
eight attention layers one after another, their outputs stacked on a last axis [B, L, D, 8], the
cross-attention once per branch on a strided slice of that stack, and the fusion weights repeated
over D before the weighted sum. Same function as our MSC (checked in
tests/bench/test_released_algorithm.py), the released cost.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tests.model.released_reference import BRANCH_WIDTHS

MASK_PENALTY = -10000.0
POOL_PENALTY = -1e10
PRIOR_MIN_WIDTH = 1e-2


def gaussian_weight(length: int, width: float, device: torch.device) -> torch.Tensor:
    """Gaussian prior [length, length] built with tensor ops: row i is the normal density of
    sigma = max(width, 0.01) / 9 centred at i / length over linspace(0, 1), over its row max."""
    centres = (torch.arange(length, device=device) / length).unsqueeze(-1)  # [L, 1]
    sigma = (width * torch.ones(length, device=device)).unsqueeze(-1).clamp(PRIOR_MIN_WIDTH) / 9
    positions = torch.linspace(0, 1, length).view(1, -1).expand(length, -1).to(device)  # [L, L]
    scale = sigma * math.sqrt(2 * math.pi)  # [L, 1]
    density = torch.exp(-(positions - centres) ** 2 / (2 * sigma ** 2)) / scale
    return density / density.max(dim=-1, keepdim=True)[0]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, D] -> [B, H, L, D / H] by view and permute."""
    batch, length, hidden = x.shape
    return x.view(batch, length, heads, hidden // heads).permute(0, 2, 1, 3)


def _attend(attention, queries, keys, mask, width, sizes) -> torch.Tensor:
    """Multi-head attention of one layer: queries [B, Lq, D], keys [B, L, D], mask [B, 1, L]
    (1 valid) or None, Gaussian `width` or None, clip sizes [B, L, 1] or None -> [B, Lq, D]."""
    query = _split_heads(attention.query(queries), attention.heads)
    key = _split_heads(attention.key(keys), attention.heads)
    value = _split_heads(attention.value(keys), attention.heads)
    logits = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])  # [B,H,Lq,L]
    if width is not None:
        prior = gaussian_weight(logits.shape[-1], width, logits.device)  # [L, L]
        logits = logits * prior.unsqueeze(0).unsqueeze(0)
    if mask is not None:
        logits = logits + (1 - mask.unsqueeze(1)) * MASK_PENALTY
    if sizes is not None:
        logits = logits + sizes.log()[:, None, None, :, 0]
    weights = attention.dropout(F.softmax(logits, dim=-1))
    context = torch.matmul(weights, value).permute(0, 2, 1, 3).contiguous()  # [B, Lq, H, dh]
    return context.view(*context.shape[:-2], -1)


def attention_layer(layer, queries, keys, mask=None, width=None, sizes=None) -> torch.Tensor:
    """Post-norm layer: norm1(x + dropout1(attention)), then norm2(x + dropout2(FFN(x)))."""
    attended = _attend(layer.self, queries, keys, mask, width, sizes)
    hidden = layer.norm1(queries + layer.dropout1(attended))
    return layer.norm2(hidden + layer.dropout2(layer.output(hidden)))


def gaussian_block(block, x, mask, token, sizes=None) -> torch.Tensor:
    """Eight branch layers one after another, stacked to [B, L, D, 8]; one cross-attention of
    the learned token per branch; per-token softmax fusion. x [B, L, D] -> [B, L, D]."""
    branches = [attention_layer(getattr(block, f"attn{k}"), x, x, mask, width, sizes).unsqueeze(-1)
                for k, width in enumerate(BRANCH_WIDTHS)]
    stacked = torch.cat(branches, dim=-1)  # [B, L, D, 8]
    tokens = token.to(stacked.device).type_as(stacked).repeat(stacked.shape[0], 1, 1)  # [B, 1, D]
    summaries = torch.cat([attention_layer(block.ca, tokens, stacked[..., k], mask)
                           for k in range(stacked.shape[-1])], dim=1)  # [B, 8, D]
    logits = block.layer2(block.dropout(F.relu(block.layer1(summaries))))  # [B, 8, L]
    weights = F.softmax(logits.permute(0, 2, 1) / block.sft_factor, dim=-1)  # [B, L, 8]
    return torch.sum(stacked * weights.unsqueeze(2).repeat(1, 1, stacked.shape[2], 1), dim=-1)


def _project(projection, positions, features: torch.Tensor) -> torch.Tensor:
    """Input projection (LayerNorm, dropout, Linear, in-place ReLU), then learned positions
    looked up from an [B, L] id tensor, LayerNorm, dropout."""
    x = F.relu(projection.net(projection.LayerNorm(features)), inplace=True)
    batch, length = x.shape[:2]
    ids = torch.arange(length, dtype=torch.long, device=x.device).unsqueeze(0).repeat(batch, 1)
    return positions.dropout(positions.LayerNorm(x + positions.position_embeddings(ids)))


def encode_queries(net, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pooled queries [Q, D] from tokens [Q, M, Dt] and mask [Q, M]."""
    x = _project(net.query_input_proj, net.query_pos_embed, tokens)
    x = attention_layer(net.query_encoder, x, x, mask.unsqueeze(1))  # [Q, M, D]
    logits = net.modular_vector_mapping(x)  # [Q, M, 1]
    keep = mask.unsqueeze(2)
    weights = F.softmax(logits * keep + (1 - keep) * POOL_PENALTY, dim=1)
    return torch.einsum("blm,bld->bmd", weights, x).squeeze(1)


def encode_clips(net, clips: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Clip tokens [B, 32, D] from features [B, 32, Dv] and sizes [B, 32, 1] (no key mask)."""
    x = _project(net.clip_input_proj, net.clip_pos_embed, clips)
    return gaussian_block(net.clip_encoder, x, None, net.weight_token, sizes)


def encode_frames(net, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Frames [B, 128, D] from features [B, 128, Dv] and mask [B, 128]; masked rows 0."""
    x = _project(net.frame_input_proj, net.frame_pos_embed, frames)
    encoded = gaussian_block(net.frame_encoder_1, x, mask.unsqueeze(1), net.weight_token)
    keep = mask.unsqueeze(-1).repeat(1, 1, encoded.shape[-1]) == 1.0
    return torch.where(keep, encoded, 0.0 * encoded)
