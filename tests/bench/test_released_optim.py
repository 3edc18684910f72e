"""The per-parameter released-algorithm optimiser applies the BertAdam update rule."""
from __future__ import annotations

import torch
from torch import nn

from bench.released_optim import LoopBertAdam, build_loop_optimizer


def test_one_step_follows_the_update_rule():
    param = nn.Parameter(torch.tensor([3.0, -4.0]))
    param.grad = torch.tensor([6.0, 8.0])  # norm 10: clipped to norm 1
    optimizer = LoopBertAdam([param], lr=0.1, weight_decay=0.01)
    optimizer.step()
    grad = torch.tensor([0.6, 0.8]) / (1.0 + 1e-6 / 10.0)
    mean, square = 0.1 * grad, 0.001 * grad * grad
    update = mean / (square.sqrt() + 1e-6) + 0.01 * torch.tensor([3.0, -4.0])
    torch.testing.assert_close(param.detach(), torch.tensor([3.0, -4.0]) - 0.1 * update)
    assert optimizer.state[param]["step"] == 1


def test_released_decay_rule_groups_by_name():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.LayerNorm = nn.LayerNorm(3)
            self.norm1 = nn.LayerNorm(3)
            self.layer1 = nn.Linear(3, 3)

    model = Tiny()
    optimizer = build_loop_optimizer(model, lr=0.1)
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    assert decayed == {id(model.norm1.weight), id(model.layer1.weight)}
