"""BertAdam against a loop reference of the update rule; parameter groups; the schedule."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from model.network import MSC
from model.optim import BertAdam, build_optimizer, no_decay_parameter_names, warmup_linear_schedule
from tests.model.batch_factory import one_thread, tiny_config
from tests.model.loss_oracles import bert_adam_loop

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.table = nn.Parameter(torch.randn(2, 4))


def _gradient_steps(params, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    scales = [0.01, 5.0, 0.3]  # below and above the clipping norm
    return [[scales[(s + i) % 3] * torch.randn(p.shape, generator=generator)
             for i, p in enumerate(params)] for s in range(steps)]


def test_bert_adam_matches_the_loop_reference_with_schedule_and_decay_groups():
    torch.manual_seed(0)
    net = TinyNet()
    params = list(net.parameters())
    initial = [p.detach().clone() for p in params]
    optimizer = build_optimizer(net, lr=0.1, weight_decay=0.01)
    schedule = warmup_linear_schedule(optimizer, total_steps=10, warmup=0.2)
    grads = _gradient_steps(params, steps=6, seed=1)
    lrs = []
    for step_grads in grads:
        lrs.append(optimizer.param_groups[0]["lr"])
        for param, grad in zip(params, step_grads):
            param.grad = grad.clone()
        optimizer.step()
        schedule.step()
    skip = no_decay_parameter_names(net)
    decay = [name not in skip for name, _ in net.named_parameters()]
    expected = bert_adam_loop(initial, grads, lrs, decay, weight_decay=0.01)
    for param, want in zip(params, expected):
        torch.testing.assert_close(param.detach().double(), want, rtol=1e-5, atol=1e-6)
    assert lrs[:3] == pytest.approx([0.0, 0.05, 0.1])


def test_clipping_leaves_the_stored_gradient_untouched():
    param = nn.Parameter(torch.zeros(3))
    param.grad = torch.tensor([30.0, 40.0, 0.0])
    BertAdam([param], lr=1.0, weight_decay=0.0).step()
    assert param.grad.tolist() == [30.0, 40.0, 0.0]
    # clipped to norm 1: g = (0.6, 0.8, 0); m = 0.1 g, v = 0.001 g^2, step = m / (sqrt(v) + eps)
    expected = -0.1 * torch.tensor([0.6, 0.8, 0.0]) / (0.001 ** 0.5 * torch.tensor([0.6, 0.8, 0.0]) + 1e-6)
    torch.testing.assert_close(param.detach(), expected)


def test_no_decay_on_biases_and_layer_norms_of_msc():
    model = MSC(tiny_config())
    skip = no_decay_parameter_names(model)
    assert "clip_block.branches.norm_attn.weight" in skip
    assert "query_proj.norm.weight" in skip and "alignment.bias" in skip
    assert "clip_block.branches.qkv.bias" in skip
    assert "clip_block.branches.qkv.weight" not in skip and "weight_token" not in skip
    optimizer = build_optimizer(model, lr=1e-3)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_schedule_values():
    optimizer = BertAdam([nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = warmup_linear_schedule(optimizer, total_steps=200, warmup=0.01)
    factors = []
    for _ in range(201):
        factors.append(optimizer.param_groups[0]["lr"] / 2.0)
        optimizer.step()
        schedule.step()
    assert factors[0] == 0.0 and factors[1] == pytest.approx(0.5) and factors[2] == pytest.approx(1.0)
    assert factors[101] == pytest.approx((101 / 200 - 1) / (0.01 - 1))
    assert factors[199] == pytest.approx(1 / 198) and factors[200] == 0.0
    assert all(a >= b for a, b in zip(factors[2:], factors[3:]))


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(lr=-1.0), "lr"), (dict(lr=0.1, betas=(1.0, 0.9)), "betas"),
    (dict(lr=0.1, eps=0.0), "eps"), (dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
    (dict(lr=0.1, max_grad_norm=-1.0), "max_grad_norm"),
])
def test_bert_adam_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BertAdam([nn.Parameter(torch.zeros(1))], **kwargs)


@pytest.mark.parametrize(("steps", "warmup", "match"), [(0, 0.01, "total_steps"), (10, 1.0, "warmup")])
def test_schedule_rejects_bad_arguments(steps, warmup, match):
    optimizer = BertAdam([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=match):
        warmup_linear_schedule(optimizer, steps, warmup)
