"""Layers: Gaussian prior vs its formula, batched branches vs running the branches one by one."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.layers import (
    PRIOR_FLOOR,
    CrossAttentionLayer,
    GaussianMixtureBlock,
    InputProjection,
    MultiBranchAttentionLayer,
    PositionalEmbedding,
    gaussian_prior,
)
from tests.model.batch_factory import one_thread
from tests.model.loss_oracles import gaussian_prior_loop

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
WIDTHS = (None, 0.5, 1.0, 5.0, 10.0, 3.0, 0.1, 8.0)


PRIOR_CASES = [(length, width) for length in (7, 32, 128) for width in (None, 0.1, 0.5, 1.0, 8.0)]
PRIOR_CASES += [(32, 0.001), (128, 0.001)]


@pytest.mark.parametrize(("length", "width"), PRIOR_CASES)
def test_gaussian_prior_matches_formula(length, width):
    expected = gaussian_prior_loop(length, width)
    torch.testing.assert_close(gaussian_prior(length, width).double(), expected,
                               rtol=1e-5, atol=1e-6)


def test_gaussian_prior_rows_peak_at_one_even_when_the_formula_underflows():
    for length, width in [(32, 0.1), (2, 0.001), (7, 0.001)]:
        prior = gaussian_prior(length, width)
        assert bool(torch.isfinite(prior).all())
        torch.testing.assert_close(prior.amax(dim=1), torch.ones(length))


def test_gaussian_prior_rejects_empty_length():
    with pytest.raises(ValueError, match="length"):
        gaussian_prior(0, 1.0)


def _heads(x, heads):
    return x.unflatten(-1, (heads, x.shape[-1] // heads)).transpose(1, 2)  # [B, H, L, dh]


def branch_reference(layer, k, width, x, mask, size_bias):
    """Branch k of a MultiBranchAttentionLayer written as one plain post-norm layer."""
    hidden = x.shape[-1]
    qkv = x @ layer.qkv.weight[k] + layer.qkv.bias[k]  # [B, L, 3D]
    query, key, value = (_heads(t, layer.heads) for t in qkv.split(hidden, dim=-1))
    logits = query @ key.transpose(-1, -2) / math.sqrt(hidden // layer.heads)
    if width is not None:
        logits = logits * gaussian_prior_loop(x.shape[1], width).float()
    logits = logits + ((1 - mask) * -10000.0)[:, None, None, :]
    if size_bias is not None:
        logits = logits + size_bias[:, None, None, :]
    context = (torch.softmax(logits, -1) @ value).transpose(1, 2).flatten(2)  # [B, L, D]
    norm1 = F.layer_norm(x + context, (hidden,), layer.norm_attn.weight[k], layer.norm_attn.bias[k])
    inner = F.relu(norm1 @ layer.ffn_in.weight[k] + layer.ffn_in.bias[k])
    ffn = inner @ layer.ffn_out.weight[k] + layer.ffn_out.bias[k]
    return F.layer_norm(norm1 + ffn, (hidden,), layer.norm_ffn.weight[k], layer.norm_ffn.bias[k])


def cross_reference(layer, token, keys, mask):
    """The cross-attention layer for one token and keys [B, L, D], written out."""
    hidden = keys.shape[-1]
    heads = layer.heads
    query = F.linear(token, layer.query.weight, layer.query.bias).reshape(heads, 1, -1)
    key, value = F.linear(keys, layer.key_value.weight, layer.key_value.bias).split(hidden, -1)
    key, value = _heads(key, heads), _heads(value, heads)  # [B, H, L, dh]
    logits = query @ key.transpose(-1, -2) / math.sqrt(hidden // heads)  # [B, H, 1, L]
    logits = logits + ((1 - mask) * -10000.0)[:, None, None, :]
    context = (torch.softmax(logits, -1) @ value).squeeze(2).flatten(1)  # [B, D]
    norm1 = F.layer_norm(token + context, (hidden,), layer.norm_attn.weight, layer.norm_attn.bias)
    ffn = F.linear(F.relu(F.linear(norm1, layer.ffn_in.weight, layer.ffn_in.bias)),
                   layer.ffn_out.weight, layer.ffn_out.bias)
    return F.layer_norm(norm1 + ffn, (hidden,), layer.norm_ffn.weight, layer.norm_ffn.bias)


def _inputs(batch=3, length=16, hidden=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, hidden, generator=generator)
    mask = torch.ones(batch, length)
    mask[1, -5:] = 0
    sizes = torch.randint(1, 6, (batch, length), generator=generator).float()
    return x, mask, torch.log(sizes)


def _randomise(module, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator) + (param == 1) * 1.0)
    return module.eval()


def test_multi_branch_layer_equals_running_branches_one_by_one():
    x, mask, size_bias = _inputs()
    layer = _randomise(MultiBranchAttentionLayer(16, 2, 0.1, WIDTHS, length=16))
    out = layer(x, mask, size_bias)  # [K, B, L, D]
    assert out.shape == (len(WIDTHS), 3, 16, 16)
    for k, width in enumerate(WIDTHS):
        torch.testing.assert_close(out[k], branch_reference(layer, k, width, x, mask, size_bias),
                                   rtol=1e-4, atol=1e-4)


def test_stored_prior_is_the_scaled_prior_without_its_tiny_entries():
    layer = MultiBranchAttentionLayer(16, 2, 0.1, WIDTHS, length=128)
    exact = torch.stack([gaussian_prior(128, w) for w in WIDTHS]) * layer.scale  # 1 / sqrt(8)
    stored = layer.scaled_prior
    assert bool(((stored == 0) | (stored >= PRIOR_FLOOR)).all())
    assert int(((exact > 0) & (exact < PRIOR_FLOOR)).sum()) > 1000  # widths 0.1 and 0.5
    assert torch.equal(stored, torch.where(exact < PRIOR_FLOOR, 0.0, exact))


def test_dropping_the_tiny_prior_entries_changes_neither_outputs_nor_gradients():
    x, mask, size_bias = _inputs(length=128, hidden=32)
    layer = _randomise(MultiBranchAttentionLayer(32, 2, 0.1, WIDTHS, length=128))
    results = []
    for prior in (layer.scaled_prior.clone(),
                  torch.stack([gaussian_prior(128, w) for w in WIDTHS]) / 4.0):
        layer.scaled_prior = prior
        inputs = x.clone().requires_grad_()
        out = layer(inputs, mask, size_bias)
        out.square().sum().backward()
        results.append((out.detach(), inputs.grad))
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-7)


def test_gmm_block_equals_branch_loop_with_one_shared_cross_attention():
    x, mask, _ = _inputs(length=16)
    block = _randomise(GaussianMixtureBlock(16, 2, 0.1, WIDTHS, 16, sft_factor=0.6))
    token = torch.randn(1, 1, 16)
    outputs = [branch_reference(block.branches, k, w, x, mask, None) for k, w in enumerate(WIDTHS)]
    summaries = torch.stack([cross_reference(block.cross_attention, token.reshape(-1), o, mask)
                             for o in outputs], dim=1)  # [B, K, D]
    logits = block.fuse_out(F.relu(block.fuse_hidden(summaries)))  # [B, K, L]
    weights = torch.softmax(logits.transpose(1, 2) / 0.6, dim=-1)  # [B, L, K]
    expected = sum(weights[..., k:k + 1] * outputs[k] for k in range(len(WIDTHS)))
    torch.testing.assert_close(block(x, mask, token), expected, rtol=1e-4, atol=1e-4)


def test_gmm_block_branch_weights_are_a_softmax_over_branches():
    x, mask, _ = _inputs(length=16)
    block = _randomise(GaussianMixtureBlock(16, 2, 0.1, WIDTHS, 16, sft_factor=0.09))
    outputs = block.branches(x, mask)
    weights = block.branch_weights(outputs, mask, torch.randn(1, 1, 16))
    assert weights.shape == (3, 16, len(WIDTHS))
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 16))


def test_masked_keys_do_not_change_valid_outputs():
    x, mask, _ = _inputs(length=16)
    layer = _randomise(MultiBranchAttentionLayer(16, 2, 0.1, WIDTHS, length=16))
    changed = x.clone()
    changed[1, -5:] = 3.0 * torch.randn(5, 16)
    torch.testing.assert_close(layer(x, mask)[:, 1, :-5], layer(changed, mask)[:, 1, :-5])


def test_dropout_acts_inside_the_feed_forward_and_on_its_output():
    x, mask, _ = _inputs(length=16)
    layer = _randomise(MultiBranchAttentionLayer(16, 2, 0.5, WIDTHS, length=16)).train()
    calls = []
    layer.dropout.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[-1]))
    layer.attn_dropout.register_forward_hook(lambda module, args, out: calls.append("probs"))
    layer(x, mask)
    assert calls == ["probs", 16, 64, 16]  # context, after the ReLU, on the FFN output


def test_no_attention_output_projection():
    layer = MultiBranchAttentionLayer(16, 2, 0.1, WIDTHS, length=16)
    names = {name for name, _ in layer.named_parameters()}
    assert names == {f"{m}.{p}" for m in ("qkv", "norm_attn", "ffn_in", "ffn_out", "norm_ffn")
                     for p in ("weight", "bias")}
    cross = {name.split(".")[0] for name, _ in CrossAttentionLayer(16, 2, 0.1).named_parameters()}
    assert cross == {"query", "key_value", "norm_attn", "ffn_in", "ffn_out", "norm_ffn"}


def test_prior_layer_rejects_other_lengths():
    layer = MultiBranchAttentionLayer(16, 2, 0.1, WIDTHS, length=16)
    with pytest.raises(ValueError, match="expected length 16"):
        layer(torch.randn(2, 8, 16), torch.ones(2, 8))


def test_heads_must_divide_hidden():
    with pytest.raises(ValueError, match="divisible"):
        MultiBranchAttentionLayer(10, 3, 0.1)


def test_projection_and_positions():
    projection = InputProjection(12, 16, 0.1).eval()
    out = projection(torch.randn(2, 5, 12))
    assert out.shape == (2, 5, 16) and bool((out >= 0).all())
    positions = PositionalEmbedding(8, 16, 0.1).eval()
    assert positions(out).shape == (2, 5, 16)
    with pytest.raises(ValueError, match="exceeds"):
        positions(torch.randn(2, 9, 16))
