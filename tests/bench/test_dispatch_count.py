"""DispatchCounter counts ATen ops and every kind of host read it documents, and nothing else."""
from __future__ import annotations

import numpy as np
import torch

from bench.dispatch_count import DispatchCounter


def test_plain_ops_are_counted_and_read_nothing():
    x = torch.randn(4, 3)
    with DispatchCounter() as counts:
        y = (x @ x.t()).relu().sum(dim=1)
        torch.cat([y, y])
    assert counts.aten_ops >= 4
    assert counts.host_reads == 0


def test_backward_ops_are_counted():
    x = torch.randn(5, requires_grad=True)
    loss = (x * x).sum()
    with DispatchCounter() as counts:
        loss.backward()
    assert counts.aten_ops >= 2
    assert counts.host_reads == 0


def test_each_documented_host_read_is_counted_once():
    x = torch.randn(6)
    mask = x > 0
    mask[0] = True
    with DispatchCounter() as counts:
        x[0].item()
        float(x[1])
        int(torch.tensor(3))
        bool(mask[2])
        f"{x[3]:.3f}"
        torch.where(mask)
        x[mask]
        x.tolist()
        x.numpy()
    assert counts.reads == {"_local_scalar_dense": 5, "nonzero": 1, "index": 1, "tolist": 1,
                            "numpy": 1}
    assert counts.host_reads == 9


def test_boolean_index_backward_is_a_read_and_integer_indexing_is_not():
    x = torch.randn(6, requires_grad=True)
    with DispatchCounter() as counts:
        x[np.array([0, 2])].sum()
        x[torch.tensor([1, 3])].sum()
        x[list(range(2))].sum()
    assert counts.host_reads == 0
    picked = x[x.detach() > -10].sum()
    with DispatchCounter() as counts:
        picked.backward()
    assert counts.reads["index_put"] == 1
