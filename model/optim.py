"""BERT-style Adam and its warm-up / linear-decay schedule (docs/model.md, Optimiser).

Clipping and weight decay follow the authors' released optimiser tensor by tensor: a stored
parameter that holds several released tensors (stacked branches, fused projections; see
model/packing.py) is clipped slice by slice, and the decay groups come from the released
parameter names (model/interop.py).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from model.interop import released_names_for
from model.packing import parameter_packings

CLIP_EPS = 1e-6
# the released rule: a parameter whose released name contains one of these is not decayed
NO_DECAY_MARKERS = ("bias", "LayerNorm.bias", "LayerNorm.weight")


class BertAdam(Optimizer):
    """Adam without bias correction, per-tensor gradient clipping and decoupled weight decay.

    For each parameter p with gradient g: g <- g * min(1, max_grad_norm / (||g|| + 1e-6));
    m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    p <- p - lr * (m / (sqrt(v) + eps) + weight_decay * p).
    A param group may carry `layouts`, one per parameter: None (the norm is over the whole
    tensor) or (view_shape, reduce_dims), and then each slice of the gradient viewed as
    view_shape is clipped on its own (norm over reduce_dims). The clipping works on a copy:
    p.grad is left as it was (the released code clips p.grad in place; the update is the same).
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
                        max_grad_norm=max_grad_norm, layouts=None)
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
            layouts = group["layouts"] or [None] * len(group["params"])
            pairs = [(p, layout) for p, layout in zip(group["params"], layouts, strict=True)
                     if p.grad is not None]
            if pairs:
                params, layouts = map(list, zip(*pairs, strict=True))
                self._update_group(group, params, layouts)
        return loss

    def _update_group(self, group: dict, params: list, layouts: list) -> None:
        """Apply the update rule to one parameter group with foreach (multi-tensor) ops."""
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("BertAdam does not support sparse gradients")
        grads = _clipped(group["max_grad_norm"], [p.grad for p in params], layouts)
        beta1, beta2 = group["betas"]
        means, squares = self._moments(params)
        torch._foreach_lerp_(means, grads, 1.0 - beta1)  # b1 m + (1 - b1) g
        torch._foreach_mul_(squares, beta2)
        torch._foreach_addcmul_(squares, grads, grads, value=1.0 - beta2)
        denominators = torch._foreach_sqrt(squares)
        torch._foreach_add_(denominators, group["eps"])
        # p - lr (m / d + wd p) as (p - lr wd p) - lr m / d: two passes over the parameters,
        # no update tensor (the factor 1 - lr wd would round to float32 and bias the decay)
        if group["weight_decay"] > 0:
            torch._foreach_add_(params, params, alpha=-group["lr"] * group["weight_decay"])
        torch._foreach_addcdiv_(params, means, denominators, value=-group["lr"])

    def _moments(self, params: list) -> tuple[list, list]:
        """First and second moment buffers of params, created as zeros on first use."""
        means, squares = [], []
        for param in params:
            state = self.state[param]
            if not state:
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
            means.append(state["exp_avg"])
            squares.append(state["exp_avg_sq"])
        return means, squares


def _clipped(max_norm: float, grads: list, layouts: list) -> list:
    """Each gradient (or each slice of it, per its layout) scaled to norm <= max_norm on its
    own (new tensors); as is when max_norm is 0. One norm op per sliced tensor, no host sync."""
    if max_norm <= 0:
        return grads
    views = [g if layout is None else g.reshape(layout[0])
             for g, layout in zip(grads, layouts, strict=True)]
    norms = _norms(views, layouts)  # 0-d, or keepdim per-slice norms
    scales = torch._foreach_add(norms, CLIP_EPS)
    torch._foreach_reciprocal_(scales)
    torch._foreach_mul_(scales, max_norm)
    torch._foreach_clamp_max_(scales, 1.0)
    clipped = torch._foreach_mul(views, scales)
    return [c.view(g.shape) for c, g in zip(clipped, grads, strict=True)]


def _norms(views: list, layouts: list) -> list:
    """Whole-tensor norms (one foreach op) for plain views, per-slice norms for the others."""
    whole = [i for i, layout in enumerate(layouts) if layout is None]
    norms = [None] * len(views)
    if whole:
        for i, norm in zip(whole, torch._foreach_norm([views[i] for i in whole]), strict=True):
            norms[i] = norm
    for i, layout in enumerate(layouts):
        if layout is not None:
            norms[i] = torch.linalg.vector_norm(views[i], dim=layout[1], keepdim=True)
    return norms


def released_no_decay(name: str) -> bool:
    """The released rule on a released parameter name: True when it gets no weight decay."""
    return any(marker in name for marker in NO_DECAY_MARKERS)


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get no weight decay, by the released rule applied to the
    released names each parameter holds (model.interop.released_names_for).

    For MSC: every bias and the LayerNorms of the input projections and positional embeddings;
    the LayerNorms inside the attention layers are decayed. Raises ValueError when one stored
    parameter holds tensors of both groups.
    """
    skip = set()
    for ours, theirs in released_names_for(model).items():
        flags = {released_no_decay(name) for name in theirs}
        if len(flags) > 1:
            raise ValueError(f"{ours}: holds decayed and undecayed released tensors {theirs}")
        if flags.pop():
            skip.add(ours)
    return skip


def clip_layouts(model: nn.Module) -> dict[str, tuple | None]:
    """Per parameter: None (clip the whole tensor) or (view_shape, reduce_dims) that clip each
    released tensor it holds on its own (model.packing.Packing.slice_view)."""
    shapes = {name: tuple(param.shape) for name, param in model.named_parameters()}
    return {name: None if packing.is_plain else packing.slice_view(shapes[name])
            for name, packing in parameter_packings(model).items()}


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01) -> BertAdam:
    """BertAdam over the model's trainable parameters: weight decay by the released names'
    rule (no_decay_parameter_names), clipping per released tensor (clip_layouts)."""
    skip = no_decay_parameter_names(model)
    layouts = clip_layouts(model)
    groups = [{"params": [], "layouts": [], "weight_decay": weight_decay},
              {"params": [], "layouts": [], "weight_decay": 0.0}]
    for name, param in model.named_parameters():
        if param.requires_grad:
            group = groups[1] if name in skip else groups[0]
            group["params"].append(param)
            group["layouts"].append(layouts[name])
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
