"""The released optimiser's algorithm, one parameter at a time: the optimiser side of the baseline.

Same update as `model.optim.BertAdam` (Adam without bias correction, each tensor's gradient
clipped to norm 1 on its own, decoupled weight decay), but as the released code runs it: a Python
loop over the parameters with `clip_grad_norm_` on each gradient (in place) and a handful of
in-place ops per tensor, instead of a few multi-tensor (foreach) ops over all of them.
The learning rate is constant here (the released schedule factor is a Python float per tensor).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import clip_grad_norm_
from torch.optim import Optimizer


class LoopBertAdam(Optimizer):
    """BertAdam with a per-parameter Python loop. Raises ValueError for lr < 0."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0):
        if lr < 0.0:
            raise ValueError(f"LoopBertAdam: lr must be >= 0, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient, one at a time."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)

    def _update(self, param: torch.Tensor, group: dict) -> None:
        """Clip param's gradient in place, update its moments, then the parameter."""
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        if group["max_grad_norm"] > 0:
            clip_grad_norm_(param, group["max_grad_norm"])
        grad = param.grad
        beta1, beta2 = group["betas"]
        state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        update = state["exp_avg"] / (state["exp_avg_sq"].sqrt() + group["eps"])
        if group["weight_decay"] > 0.0:
            update += group["weight_decay"] * param
        param.add_(-(group["lr"] * update))
        state["step"] += 1


NO_DECAY_NAME_PARTS = ("bias", "LayerNorm.bias", "LayerNorm.weight")


def build_loop_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01) -> LoopBertAdam:
    """LoopBertAdam over a model with the released parameter names: no weight decay for a
    parameter whose name contains one of NO_DECAY_NAME_PARTS (the released grouping rule)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    skip = {name for name, _ in named if any(part in name for part in NO_DECAY_NAME_PARTS)}
    decay = [p for name, p in named if name not in skip]
    no_decay = [p for name, p in named if name in skip]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return LoopBertAdam([group for group in groups if group["params"]], lr=lr,
                        weight_decay=weight_decay)
