"""BertAdam against loop references of the update rule: on plain tensors, and on the
per-branch reference network's released tensors (per-slice clipping, released decay groups,
warm-up); parameter groups; the schedule."""
from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from torch import nn

from model.config import MSCConfig
from model.interop import convert_authors_state_dict, to_authors_state_dict
from model.network import MSC
from model.optim import (
    BertAdam,
    build_optimizer,
    clip_layouts,
    no_decay_parameter_names,
    warmup_linear_schedule,
)
from tests.model.batch_factory import one_thread, tiny_config
from tests.model.loss_oracles import bert_adam_loop
from tests.model.released_reference import ReferenceMSC, randomised

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
        for param, grad in zip(params, step_grads, strict=True):
            param.grad = grad.clone()
        optimizer.step()
        schedule.step()
    decay = [name in ("linear.weight", "norm.weight", "table") for name, _ in net.named_parameters()]
    expected = bert_adam_loop(initial, grads, lrs, decay, weight_decay=0.01)
    for param, want in zip(params, expected, strict=True):
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


def test_decay_groups_follow_the_released_names():
    model = MSC(tiny_config())
    skip = no_decay_parameter_names(model)
    for name in ("query_proj.norm.weight", "clip_pos.norm.weight", "frame_proj.norm.bias",
                 "alignment.bias", "clip_block.branches.qkv.bias", "query_layer.norm_ffn.bias",
                 "frame_block.cross_attention.key_value.bias"):
        assert name in skip, name
    for name in ("clip_block.branches.norm_attn.weight", "query_layer.norm_ffn.weight",
                 "frame_block.cross_attention.norm_attn.weight", "clip_block.branches.qkv.weight",
                 "weight_token", "query_pos.embedding.weight", "query_pool.weight"):
        assert name not in skip, name
    optimizer = build_optimizer(model, lr=1e-3)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert len(decayed["layouts"]) == len(decayed["params"])


def test_clip_layouts_put_each_released_tensor_in_one_slice():
    layouts = clip_layouts(MSC(tiny_config()))  # hidden 32
    assert layouts["clip_block.branches.qkv.weight"] == ((8, 32, 3, 32), (1, 3))
    assert layouts["clip_block.branches.qkv.bias"] == ((8, 3, 32), (2,))
    assert layouts["frame_block.branches.ffn_in.weight"] == ((8, 32, 1, 128), (1, 3))
    assert layouts["query_layer.norm_attn.weight"] == ((1, 1, 32), (2,))
    assert layouts["clip_block.cross_attention.key_value.weight"] == ((2, 32, 32), (1, 2))
    assert layouts["clip_block.cross_attention.query.weight"] is None
    assert layouts["weight_token"] is None


REFERENCE_SIZES = dict(text_dim=12, video_dim=10, hidden=8, heads=2, text_len=6, frame_len=128)
LR, WEIGHT_DECAY, TOTAL_STEPS, WARMUP = 0.05, 0.01, 10, 0.2


def _released_no_decay(name: str) -> bool:
    """The released rule, on released names."""
    return any(marker in name for marker in ("bias", "LayerNorm.bias", "LayerNorm.weight"))


def _schedule_factor(step: int) -> float:
    progress = step / TOTAL_STEPS
    if progress < WARMUP:
        return progress / WARMUP
    return max((progress - 1.0) / (WARMUP - 1.0), 0.0)


def _per_tensor_bert_adam(tensors: dict, grads_per_step: list[dict]) -> dict:
    """docs/model.md's optimiser per released tensor, float64: clip, moments, decay, schedule."""
    values = {name: t.double().clone() for name, t in tensors.items()}
    means = {name: torch.zeros_like(v) for name, v in values.items()}
    squares = {name: torch.zeros_like(v) for name, v in values.items()}
    for step, grads in enumerate(grads_per_step):
        lr = LR * _schedule_factor(step)
        for name, value in values.items():
            grad = grads[name].double()
            grad = grad * min(1.0, 1.0 / (math.sqrt(float((grad * grad).sum())) + 1e-6))
            means[name] = 0.9 * means[name] + 0.1 * grad
            squares[name] = 0.999 * squares[name] + 0.001 * grad * grad
            update = means[name] / (squares[name].sqrt() + 1e-6)
            if not _released_no_decay(name):
                update = update + WEIGHT_DECAY * value
            values[name] = value - lr * update
    return values


def _uneven_gradients(reference: nn.Module, steps: int) -> list[dict]:
    """Per released tensor, per step: N(0, 1) scaled by 100 for every third tensor (so they are
    clipped) and by 0.01 for the others (so they are not)."""
    generator = torch.Generator().manual_seed(21)
    return [{name: torch.randn(p.shape, generator=generator) * (100.0 if (i + s) % 3 == 0 else 0.01)
             for i, (name, p) in enumerate(reference.named_parameters())} for s in range(steps)]


def _run_project_optimiser(reference: nn.Module, grads_per_step: list[dict],
                           per_slice: bool = True) -> dict:
    model = MSC(MSCConfig(**REFERENCE_SIZES, sft_factor=0.5))
    model.load_state_dict(convert_authors_state_dict(reference.state_dict()))
    optimizer = build_optimizer(model, lr=LR, weight_decay=WEIGHT_DECAY)
    if not per_slice:
        for group in optimizer.param_groups:
            group["layouts"] = None
    schedule = warmup_linear_schedule(optimizer, total_steps=TOTAL_STEPS, warmup=WARMUP)
    params = dict(model.named_parameters())
    for grads in grads_per_step:
        for name, grad in convert_authors_state_dict(grads).items():
            params[name].grad = grad
        optimizer.step()
        schedule.step()
    return to_authors_state_dict(model)


def test_three_steps_equal_a_per_tensor_bert_adam_on_the_released_tensors():
    torch.manual_seed(0)
    reference = randomised(ReferenceMSC(**REFERENCE_SIZES, sft_factor=0.5), seed=1)
    start = {name: p.detach().clone() for name, p in reference.named_parameters()}
    grads = _uneven_gradients(reference, steps=3)
    want = _per_tensor_bert_adam(start, grads)
    got = _run_project_optimiser(reference, grads)
    for name, value in want.items():
        torch.testing.assert_close(got[name].double(), value, rtol=0, atol=1e-6, msg=name)
    first_step = _run_project_optimiser(reference, grads[:1])
    assert all(torch.equal(first_step[name], start[name]) for name in start)  # lr 0 at step 0
    stacked = _run_project_optimiser(reference, grads, per_slice=False)
    worst = max(float((stacked[name].double() - value).abs().max()) for name, value in want.items())
    assert worst > 1e-3  # clipping whole stacked tensors is a different optimiser


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
    assert all(a >= b for a, b in pairwise(factors[2:]))


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
