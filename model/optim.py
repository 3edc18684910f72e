"""BERT-style Adam and its warm-up / linear-decay schedule (spec section 5)."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from model.layers import StackedLayerNorm

CLIP_EPS = 1e-6


class BertAdam(Optimizer):
    """Adam without bias correction, per-tensor gradient clipping and decoupled weight decay.

    For each parameter p with gradient g: g <- g * min(1, max_grad_norm / (||g|| + 1e-6));
    m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    p <- p - lr * (m / (sqrt(v) + eps) + weight_decay * p).
    The clipping works on a copy: p.grad is left as it was.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, max_grad_norm: float = 1.0):
        if not lr >= 0.0:
            raise ValueError(f"BertAdam: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"BertAdam: betas must be in [0, 1), got {betas}")
        if not eps > 0.0:
            raise ValueError(f"BertAdam: eps must be > 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"BertAdam: weight_decay must be >= 0, got {weight_decay}")
        if not max_grad_norm >= 0.0:
            raise ValueError(f"BertAdam: max_grad_norm must be >= 0 (0 = no clipping), "
                             f"got {max_grad_norm}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient; returns closure() when given.

        Raises RuntimeError for sparse gradients.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update_group(group, params)
        return loss

    def _update_group(self, group: dict, params: list) -> None:
        """Apply the update rule to one parameter group with foreach (multi-tensor) ops."""
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("BertAdam does not support sparse gradients")
        grads = _clipped(group["max_grad_norm"], [p.grad for p in params])
        beta1, beta2 = group["betas"]
        means, squares = self._moments(params)
        torch._foreach_mul_(means, beta1)
        torch._foreach_add_(means, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(squares, beta2)
        torch._foreach_addcmul_(squares, grads, grads, value=1.0 - beta2)
        denominators = torch._foreach_sqrt(squares)
        torch._foreach_add_(denominators, group["eps"])
        updates = torch._foreach_div(means, denominators)
        if group["weight_decay"] > 0:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        torch._foreach_add_(params, updates, alpha=-group["lr"])

    def _moments(self, params: list) -> tuple[list, list]:
        """First and second moment buffers of params, created as zeros on first use."""
        means, squares = [], []
        for param in params:
            state = self.state[param]
            if not state:
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
            state["step"] = state.get("step", 0) + 1
            means.append(state["exp_avg"])
            squares.append(state["exp_avg_sq"])
        return means, squares


def _clipped(max_norm: float, grads: list) -> list:
    """Each gradient scaled to norm <= max_norm on its own (new tensors); as is when max_norm 0."""
    if max_norm <= 0:
        return grads
    norms = torch.stack(torch._foreach_norm(grads))  # [P]
    scales = (max_norm / (norms + CLIP_EPS)).clamp(max=1.0)  # [P]
    return torch._foreach_mul(grads, list(scales.unbind()))


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get no weight decay: biases and LayerNorm parameters."""
    names = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        is_norm = isinstance(module, (nn.LayerNorm, StackedLayerNorm))
        for param_name, _ in module.named_parameters(recurse=False):
            if is_norm or param_name.endswith("bias"):
                names.add(prefix + param_name)
    return names


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01) -> BertAdam:
    """BertAdam over the model's trainable parameters, no weight decay on biases and LayerNorms."""
    skip = no_decay_parameter_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name in skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return BertAdam([group for group in groups if group["params"]], lr=lr,
                    weight_decay=weight_decay)


def warmup_linear_factor(step: int, total_steps: int, warmup: float) -> float:
    """Learning-rate factor after `step` updates: x / warmup while x = step / total_steps is
    below warmup, then linear decay (x - 1) / (warmup - 1), reaching 0 at x = 1."""
    progress = step / total_steps
    if progress < warmup:
        return progress / warmup
    return max((progress - 1.0) / (warmup - 1.0), 0.0)


def warmup_linear_schedule(optimizer: Optimizer, total_steps: int,
                           warmup: float = 0.01) -> LambdaLR:
    """LambdaLR with linear warm-up over the first `warmup` fraction of `total_steps`, then
    linear decay to 0 at step `total_steps`. Raises ValueError for total_steps < 1 or warmup
    outside [0, 1)."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"warmup_linear_schedule: total_steps must be an int >= 1, "
                         f"got {total_steps!r}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup_linear_schedule: warmup must be in [0, 1), got {warmup}")
    return LambdaLR(optimizer, lambda step: warmup_linear_factor(step, total_steps, warmup))
