"""How one stored parameter holds several tensors of the authors' released network.

The project stores the 8 Gaussian branches stacked along a leading branch dimension and fuses
some projections (q, k and v; key and value) into one matrix. A `Packing` describes that
arrangement, so the optimiser can clip each released tensor on its own and the checkpoint
converter can split and rebuild the stored tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Packing:
    """A stored parameter made of `max(branches, 1) * parts` released tensors.

    branches: size of the leading stacked dimension K (0: not stacked).
    parts: released tensors concatenated along their output axis (axis 0 of a released Linear
        weight [Dout, Din] or bias [Dout]), e.g. 3 for q, k, v.
    transposed: each branch's matrix is stored as the transpose of the concatenated released
        weight, [Din, parts * Dout].
    Released tensors are ordered branch by branch, parts in order within a branch.
    """

    branches: int = 0
    parts: int = 1
    transposed: bool = False

    @property
    def is_plain(self) -> bool:
        """True when the stored parameter is exactly one released tensor."""
        return self.branches == 0 and self.parts == 1 and not self.transposed

    @property
    def count(self) -> int:
        """Number of released tensors in the stored parameter."""
        return max(self.branches, 1) * self.parts

    def pack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Stored tensor from the released tensors in order.

        Raises ValueError when the count is wrong; torch raises RuntimeError when the parts'
        shapes cannot be concatenated or stacked.
        """
        if len(tensors) != self.count:
            raise ValueError(f"Packing {self}: expected {self.count} tensors, got {len(tensors)}")
        per_branch = []
        for start in range(0, self.count, self.parts):
            joined = torch.cat(tensors[start:start + self.parts], dim=0)  # [parts * Dout, ...]
            per_branch.append(joined.t() if self.transposed else joined)
        stored = torch.stack(per_branch) if self.branches else per_branch[0]
        return stored.contiguous()

    def unpack(self, stored: torch.Tensor) -> list[torch.Tensor]:
        """The released tensors held by `stored`, in order, each a contiguous copy."""
        branches = stored.unbind(0) if self.branches else (stored,)
        tensors = []
        for branch in branches:
            joined = branch.t() if self.transposed else branch  # [parts * Dout, ...]
            tensors.extend(joined.chunk(self.parts, dim=0))
        return [t.clone(memory_format=torch.contiguous_format) for t in tensors]

    def slice_view(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(view_shape, reduce_dims) for a stored tensor of `shape`.

        Viewed as view_shape, a norm over reduce_dims gives one value per released tensor:
        e.g. a stacked q/k/v weight [K, D, 3D] -> view [K, D, 3, D], reduce (1, 3) -> [K, 3].
        """
        lead = tuple(shape[:1]) if self.branches else ()
        body = tuple(shape[len(lead):])
        if self.transposed:  # body [Din, parts * Dout]
            view = body[:-1] + (self.parts, body[-1] // self.parts)
            parts_axis = len(view) - 2
        else:  # body [parts * Dout, ...]
            view = (self.parts, body[0] // self.parts) + body[1:]
            parts_axis = 0
        reduce = tuple(len(lead) + axis for axis in range(len(view)) if axis != parts_axis)
        return lead + view, reduce


def parameter_packings(model: nn.Module) -> dict[str, Packing]:
    """Packing of every parameter of `model` by name; plain unless a module declares otherwise.

    A module declares the packing of its own (or its children's) parameters with a method
    `packings() -> {relative parameter name: Packing}`.
    """
    packings = {name: Packing() for name, _ in model.named_parameters()}
    for module_name, module in model.named_modules():
        declare = getattr(module, "packings", None)
        if not callable(declare):
            continue
        prefix = f"{module_name}." if module_name else ""
        for name, packing in declare().items():
            packings[prefix + name] = packing
    return packings
