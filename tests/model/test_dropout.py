"""model.dropout against the element-by-element oracle of tests/model/oracles.py, and its
keep rate."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from model.dropout import Dropout, dropout, keep_threshold, random_int32
from tests.model import oracles


@pytest.mark.parametrize("shape", [(7,), (3, 5, 9), (2, 1, 4, 4)])
@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_dropout_equals_the_element_loop_on_the_same_bits(shape, p):
    x = torch.randn(shape, dtype=torch.float64)
    torch.manual_seed(3)
    out = dropout(x, p, training=True)
    torch.manual_seed(3)
    bits = random_int32(shape, x.device)
    assert_close(out, oracles.dropout(x, bits, p), rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_keep_rate_is_one_minus_p(p):
    torch.manual_seed(0)
    n = 1_000_001  # odd: the last 64-bit word is half used
    kept = float((dropout(torch.ones(n), p, training=True) != 0).double().mean())
    assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)


def test_threshold_is_exact_to_two_to_the_minus_33():
    for p in (0.0, 0.1, 0.2, 0.31, 0.5, 1.0):
        keep = (keep_threshold(p) + 2 ** 31) / 2 ** 32
        assert abs(keep - (1 - p)) <= 2 ** -33


def test_both_halves_of_a_word_are_independent_uniforms():
    torch.manual_seed(1)
    bits = random_int32((400_000,), torch.device("cpu")).double()
    low, high = bits[0::2], bits[1::2]
    assert abs(float(torch.corrcoef(torch.stack([low, high]))[0, 1])) < 0.01
    for half in (low, high):  # uniform on [-2^31, 2^31): mean 0, quartiles at +-2^30
        assert abs(float(half.mean())) < 0.01 * 2 ** 31
        assert abs(float((half < -2 ** 30).double().mean()) - 0.25) < 0.005


def test_gradient_is_the_same_scaled_mask():
    x = torch.randn(6, 8, requires_grad=True)
    out = dropout(x, 0.25, training=True)
    out.backward(torch.ones_like(out))
    scale = torch.where(out != 0, 1 / 0.75, 0.0)
    assert_close(x.grad, scale)
    assert_close(out, x.detach() * scale)


def test_seed_fixes_the_mask_and_eval_is_identity():
    x = torch.randn(5, 9)
    torch.manual_seed(7)
    first = dropout(x, 0.2, training=True)
    torch.manual_seed(7)
    assert torch.equal(first, dropout(x, 0.2, training=True))
    assert dropout(x, 0.2, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))


def test_module_is_an_nn_dropout_with_train_and_eval():
    module = Dropout(0.5)
    assert isinstance(module, nn.Dropout)
    x = torch.ones(1000)
    assert bool((module.train()(x) == 0).any())
    assert module.eval()(x) is x


def test_bf16_keeps_its_dtype():
    out = dropout(torch.ones(64, dtype=torch.bfloat16), 0.2, training=True)
    assert out.dtype == torch.bfloat16
    assert set(out.unique().tolist()) <= {0.0, 1.25}


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_rejects_p_outside_zero_one(p):
    with pytest.raises(ValueError, match="p must be in"):
        dropout(torch.ones(3), p, training=True)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_dropout_keeps_one_minus_p_and_scales_forward_and_backward(backend):
    torch.manual_seed(0)
    x = torch.ones(64, 257, requires_grad=True)
    compiled = torch.compile(lambda t: dropout(t, 0.25, True), backend=backend, fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    kept = out.detach() != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    assert_close(out.detach()[kept], torch.full_like(out.detach()[kept], 1 / 0.75))
    assert_close(x.grad, out.detach())  # d(sum)/dx is the same scaled mask
