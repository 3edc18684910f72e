"""Building blocks of the MSC network (docs/model.md, Network).

The multi-scale Gaussian block runs its branches as one batched computation: every branch's
weights are stacked along a leading branch dimension K and applied with batched matmuls. Layers
whose parameters hold several of the released network's tensors declare it with `packings()`
(see model/packing.py).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.dropout import Dropout
from model.packing import Packing

MASK_PENALTY = -10000.0
POOL_PENALTY = -1e10
LAYER_NORM_EPS = 1e-5
PRIOR_FLOOR = 2.0 ** -64


def gaussian_prior(length: int, width: float | None) -> torch.Tensor:
    """Gaussian attention prior [length, length] (docs/model.md); all ones when width is None.

    Row i is exp(-(p_j - c_i)^2 / (2 sigma^2)) / (sigma sqrt(2 pi)) over positions
    p = linspace(0, 1, length), centre c_i = i / length, sigma = max(width, 0.01) / 9, divided
    by its row maximum. The division is done in log space (the constant factor cancels), so a
    row whose every entry would underflow still peaks at 1. Raises ValueError for length < 1.
    """
    if length < 1:
        raise ValueError(f"gaussian_prior: length must be >= 1, got {length}")
    if width is None:
        return torch.ones(length, length)
    centres = torch.arange(length, dtype=torch.float64).unsqueeze(1) / length  # [L, 1]
    positions = torch.linspace(0.0, 1.0, length, dtype=torch.float64).unsqueeze(0)  # [1, L]
    sigma = max(float(width), 0.01) / 9.0
    exponent = -(positions - centres) ** 2 / (2 * sigma ** 2)  # [L, L]
    return torch.exp(exponent - exponent.amax(dim=1, keepdim=True)).float()


def key_mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """Additive logit bias [B, L]: 0 for valid keys, -10000 for masked keys (mask 0)."""
    return (1.0 - mask) * MASK_PENALTY


class InputProjection(nn.Module):
    """LayerNorm(Din) -> Dropout -> Linear(Din -> D) -> ReLU."""

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim, eps=LAYER_NORM_EPS)
        self.dropout = Dropout(dropout)
        self.linear = nn.Linear(in_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project [..., Din] features to [..., D]."""
        return F.relu(self.linear(self.dropout(self.norm(x))))


class PositionalEmbedding(nn.Module):
    """Learned positions: LayerNorm(x + pos) -> Dropout."""

    def __init__(self, max_len: int, hidden: int, dropout: float):
        super().__init__()
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add positions to x [B, L, D]; raises ValueError when L exceeds max_len."""
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"PositionalEmbedding: sequence length {length} exceeds "
                             f"the {self.max_len} learned positions")
        return self.dropout(self.norm(x + self.embedding.weight[:length]))  # [B, L, D]


class StackedLinear(nn.Module):
    """K independent Linear(Din -> Dout) layers whose weights are stacked: weight [K, Din, Dout].

    With parts > 1 each branch is `parts` Linear(Din -> Dout / parts) layers side by side (e.g.
    the query, key and value projections). Raises ValueError when parts does not divide Dout.
    """

    def __init__(self, branches: int, in_dim: int, out_dim: int, parts: int = 1):
        super().__init__()
        if out_dim % parts:
            raise ValueError(f"StackedLinear: out_dim ({out_dim}) must be divisible by "
                             f"parts ({parts})")
        self.parts = parts
        self.weight = nn.Parameter(torch.empty(branches, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(branches, out_dim))
        nn.init.normal_(self.weight, std=0.02)

    def packings(self) -> dict[str, Packing]:
        """The weight holds K x parts transposed Linear weights, the bias their biases."""
        branches = self.weight.shape[0]
        return {"weight": Packing(branches, self.parts, transposed=True),
                "bias": Packing(branches, self.parts)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply branch k to x[k]: x [K, ..., Din] -> [K, ..., Dout]."""
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # [K, N, Din]
        out = torch.baddbmm(self.bias.unsqueeze(1), flat, self.weight)  # [K, N, Dout]
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        """Apply every branch to the same input: x [..., Din] -> [K, ..., Dout] (one matmul)."""
        branches, in_dim, out_dim = self.weight.shape
        flat = x.reshape(-1, in_dim)  # [N, Din]
        weight = self.weight.permute(1, 0, 2).reshape(in_dim, branches * out_dim)
        out = torch.addmm(self.bias.reshape(-1), flat, weight)  # [N, K * Dout]
        out = out.reshape(-1, branches, out_dim).transpose(0, 1)  # [K, N, Dout]
        return out.reshape(branches, *x.shape[:-1], out_dim)


class StackedLayerNorm(nn.Module):
    """K independent LayerNorms over the last dimension: weight, bias [K, D]."""

    def __init__(self, branches: int, hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(branches, hidden))
        self.bias = nn.Parameter(torch.zeros(branches, hidden))

    def packings(self) -> dict[str, Packing]:
        """Weight and bias each hold K LayerNorm tensors."""
        branches = self.weight.shape[0]
        return {"weight": Packing(branches), "bias": Packing(branches)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x [K, ..., D] with branch k's affine parameters on x[k]."""
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        normed = F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS)
        return torch.addcmul(self.bias.reshape(shape), normed, self.weight.reshape(shape))


class MultiBranchAttentionLayer(nn.Module):
    """K post-norm transformer layers ("attention layers") sharing one input, run batched.

    Branch k multiplies its logits by the Gaussian prior of width widths[k] (None: no prior).
    Each layer: QK^T/sqrt(dh) -> *prior -> +key mask -> +log(size) -> softmax -> dropout -> @V;
    the heads' contexts concatenated (no output projection) -> dropout -> residual -> LayerNorm;
    then FFN Linear(D -> 4D) -> ReLU -> dropout -> Linear(4D -> D) -> dropout -> residual ->
    LayerNorm. All dropouts use the one rate `dropout`.
    """

    def __init__(self, hidden: int, heads: int, dropout: float,
                 widths: Sequence[float | None] = (None,), length: int | None = None):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        if length is None and any(width is not None for width in widths):
            raise ValueError("a Gaussian prior needs a fixed sequence length")
        branches = len(widths)
        self.heads = heads
        self.length = length
        self.qkv = StackedLinear(branches, hidden, 3 * hidden, parts=3)
        self.attn_dropout = Dropout(dropout)
        self.dropout = Dropout(dropout)
        self.norm_attn = StackedLayerNorm(branches, hidden)
        self.ffn_in = StackedLinear(branches, hidden, 4 * hidden)
        self.ffn_out = StackedLinear(branches, 4 * hidden, hidden)
        self.norm_ffn = StackedLayerNorm(branches, hidden)
        self.has_prior = length is not None and any(width is not None for width in widths)
        self.scale = 1.0 / math.sqrt(hidden // heads)
        if self.has_prior:
            # the logits' 1/sqrt(dh) folded into the prior: (QK^T / sqrt(dh)) * prior in one op
            priors = torch.stack([gaussian_prior(length, width) for width in widths]) * self.scale
            # entries below PRIOR_FLOOR move a logit by less than float32 can show after the
            # softmax, but make subnormal products that the CPU computes ~100x slower: store 0
            priors = priors.masked_fill(priors < PRIOR_FLOOR, 0.0)
            self.register_buffer("scaled_prior", priors, persistent=False)  # [K, L, L]

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                size_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Run all branches on x [B, L, D] with key mask [B, L] and optional log-size bias [B, L].

        Returns [K, B, L, D]. Raises ValueError when L differs from the prior's length.
        """
        if self.has_prior and x.shape[1] != self.length:
            raise ValueError(f"MultiBranchAttentionLayer: expected length {self.length}, "
                             f"got {x.shape[1]}")
        context = self._attend(x, mask, size_bias)  # [K, B, L, D]
        hidden = self.norm_attn(x.unsqueeze(0) + self.dropout(context))  # [K, B, L, D]
        inner = self.dropout(F.relu(self.ffn_in(hidden)))  # [K, B, L, 4D]
        return self.norm_ffn(hidden + self.dropout(self.ffn_out(inner)))  # [K, B, L, D]

    def _attend(self, x: torch.Tensor, mask: torch.Tensor,
                size_bias: torch.Tensor | None) -> torch.Tensor:
        """Multi-head attention context of every branch: [K, B, L, D]."""
        batch, length, hidden = x.shape
        head_dim = hidden // self.heads
        qkv = self.qkv.forward_shared(x)  # [K, B, L, 3D]
        qkv = qkv.reshape(-1, batch, length, 3, self.heads, head_dim).permute(3, 0, 1, 4, 2, 5)
        # unbind, not indexing: its backward stacks the three gradients instead of zero-filling
        # a full [3, K, B, H, L, dh] buffer per part.
        query, key, value = qkv.unbind(0)  # [K, B, H, L, dh]
        bias = key_mask_bias(mask)  # [B, L]
        if size_bias is not None:
            bias = bias + size_bias
        bias = bias[None, :, None, None, :]  # [1, B, 1, 1, L]
        products = query @ key.transpose(-1, -2)  # [K, B, H, L, L]
        # scale, prior and key bias in one pass over the [K, B, H, L, L] logits
        if self.has_prior:
            logits = torch.addcmul(bias, products, self.scaled_prior[:, None, None])
        else:
            logits = torch.add(bias, products, alpha=self.scale)
        weights = self.attn_dropout(torch.softmax(logits, dim=-1))
        context = weights @ value  # [K, B, H, L, dh]
        return context.transpose(2, 3).reshape(-1, batch, length, hidden)


class CrossAttentionLayer(nn.Module):
    """One query token attends to a key sequence.

    Multi-head attention (no output projection) -> dropout -> residual -> LayerNorm, then FFN
    Linear(D -> D) -> ReLU -> dropout -> Linear(D -> D) -> dropout -> residual -> LayerNorm.
    Key mask, no size bias. The key and value projections are stored fused in `key_value`.

    With a single query the key and value projections need not be applied to every key: head
    h's logit of key x_j is q_h . (W_k,h x_j + b_k,h) = x_j . (W_k,h^T q_h) + const (the
    constant cancels in the softmax), and its context is sum_j p_j (W_v,h x_j + b_v,h) =
    W_v,h (sum_j p_j x_j) + b_v,h sum_j p_j. So the keys are pooled in the input space and
    projected once per head: the same function as projecting every key, equal to float
    rounding, without the [..., L, 2D] key/value tensor.
    """

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key_value = nn.Linear(hidden, 2 * hidden)
        self.attn_dropout = Dropout(dropout)
        self.dropout = Dropout(dropout)
        self.norm_attn = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.ffn_in = nn.Linear(hidden, hidden)
        self.ffn_out = nn.Linear(hidden, hidden)
        self.norm_ffn = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)

    def packings(self) -> dict[str, Packing]:
        """`key_value` holds the key and the value Linear, one after the other."""
        return {"key_value.weight": Packing(parts=2), "key_value.bias": Packing(parts=2)}

    def forward(self, token: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """token [D] attends to keys [..., L, D] with key mask broadcastable to [..., L] -> [..., D]."""
        attended = self.norm_attn(token + self.dropout(self._attend(token, keys, mask)))
        inner = self.dropout(F.relu(self.ffn_in(attended)))  # [..., D]
        return self.norm_ffn(attended + self.dropout(self.ffn_out(inner)))  # [..., D]

    def _attend(self, token: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Multi-head attention context [..., D] of the token over keys [..., L, D]."""
        hidden = token.shape[-1]
        head_dim = hidden // self.heads
        key_weight, value_weight = self.key_value.weight.chunk(2, dim=0)  # [D, D] each
        value_bias = self.key_value.bias[hidden:].reshape(self.heads, head_dim)  # [H, dh]
        query = self.query(token).reshape(self.heads, 1, head_dim)  # [H, 1, dh]
        probe = query @ key_weight.reshape(self.heads, head_dim, hidden)  # [H, 1, D]
        probe = probe.squeeze(1) / math.sqrt(head_dim)  # [H, D]
        logits = keys @ probe.t() + key_mask_bias(mask).unsqueeze(-1)  # [..., L, H]
        weights = self.attn_dropout(torch.softmax(logits, dim=-2))  # [..., L, H]
        pooled = weights.transpose(-1, -2) @ keys  # [..., H, D]
        heads = value_weight.reshape(self.heads, head_dim, hidden)  # [H, dh, D]
        context = torch.einsum("...hd,hed->...he", pooled, heads)  # [..., H, dh]
        context = context + weights.sum(dim=-2).unsqueeze(-1) * value_bias  # [..., H, dh]
        return context.flatten(-2)  # [..., D]


class GaussianMixtureBlock(nn.Module):
    """Multi-scale Gaussian (GMM) block over a fixed length L (docs/model.md, GMM block).

    The branches (one per width) run batched in a MultiBranchAttentionLayer; a learned token,
    passed in by the caller so that several blocks can share it, cross-attends to each branch
    output through this block's one cross-attention layer (shared by the branches); an MLP
    maps the K results to per-token branch weights, softmaxed over branches at temperature
    sft_factor; the output is the weighted sum of the branch outputs.
    """

    def __init__(self, hidden: int, heads: int, dropout: float, widths: Sequence[float | None],
                 length: int, sft_factor: float):
        super().__init__()
        self.length = length
        self.sft_factor = sft_factor
        self.branches = MultiBranchAttentionLayer(hidden, heads, dropout, widths, length)
        self.cross_attention = CrossAttentionLayer(hidden, heads, dropout)
        self.fuse_hidden = nn.Linear(hidden, hidden)
        self.fuse_dropout = Dropout(dropout)
        self.fuse_out = nn.Linear(hidden, length)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, token: torch.Tensor,
                size_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Encode x [B, L, D] with key mask [B, L], shared token [1, 1, D], optional log-size
        bias [B, L]; returns [B, L, D]."""
        outputs = self.branches(x, mask, size_bias)  # [K, B, L, D]
        weights = self.branch_weights(outputs, mask, token)  # [B, L, K]
        return torch.einsum("blk,kbld->bld", weights, outputs)

    def branch_weights(self, outputs: torch.Tensor, mask: torch.Tensor,
                       token: torch.Tensor) -> torch.Tensor:
        """Per-token softmax weights [B, L, K] of the branch outputs [K, B, L, D]."""
        summary = self.cross_attention(token.reshape(-1), outputs, mask)  # [K, B, D]
        hidden = self.fuse_dropout(F.relu(self.fuse_hidden(summary)))
        logits = self.fuse_out(hidden).permute(1, 2, 0)  # [B, L, K]
        return torch.softmax(logits / self.sft_factor, dim=-1)
