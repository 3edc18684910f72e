"""The fast ops compile as one graph each: torch.compile(fullgraph=True) finds no graph break.

A graph break (a host read such as .item(), data-dependent Python branching, a Python loop over
data) raises under fullgraph=True, so these tests fail if any of them creeps in. Graph capture
(TorchDynamo) decides fullgraph whatever the backend, so the forward-only ops use the "eager"
backend; cbva_loss uses "aot_eager", which also traces its backward through AOTAutograd. Both
skip Inductor's C++ code generation, which takes minutes on these CPUs; the CUDA test runs the
Inductor backend itself.
"""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from model import merge
from model.cbva import cbva_loss

pytestmark = pytest.mark.slow


def _compiled(fn, backend: str = "eager"):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)


def _video_batch(batch: int = 4, device: str = "cpu"):
    gen = torch.Generator().manual_seed(21)
    clip_feats, sizes, labels = merge.order_preserving_merge(torch.randn(batch, 128, 8, generator=gen))
    frames = torch.randn(batch, 128, 8, generator=gen)
    segments = torch.randn(batch, 32, 8, generator=gen)
    tensors = (frames, segments, labels, sizes, merge.l2_normalize(clip_feats))
    return tuple(tensor.to(device) for tensor in tensors)


def test_order_preserving_merge_and_closure_compile_without_graph_breaks():
    x = torch.randn(3, 128, 8, generator=torch.Generator().manual_seed(22))
    for got, want in zip(_compiled(merge.order_preserving_merge)(x),
                         merge.order_preserving_merge(x), strict=True):
        assert_close(got, want)
    feats = merge.l2_normalize(x[:, :32])
    step = _compiled(lambda f: merge.segment_count(merge.closure_ratio(f, 0.2)))
    assert torch.equal(step(feats), merge.segment_count(merge.closure_ratio(feats, 0.2)))


def test_bipartite_merge_compiles_without_graph_breaks():
    _, segments, labels, sizes, clip_feats = _video_batch()
    target = torch.tensor([5, 20, 12, 32])
    compiled = _compiled(merge.bipartite_merge)
    for got, want in zip(compiled(segments, clip_feats, sizes, labels, target),
                         merge.bipartite_merge(segments, clip_feats, sizes, labels, target),
                         strict=True):
        assert_close(got, want)


def _check_compiled_cbva(backend: str, device: str) -> None:
    """Compiled cbva_loss gives the eager loss, segment count and gradients."""
    frames, segments, labels, sizes, clip_feats = _video_batch(device=device)
    counts = torch.tensor([5, 8, 12, 32], device=device)
    compiled = _compiled(lambda f, s: cbva_loss(f, s, labels, sizes, clip_feats, counts), backend)
    results = []
    for run in (compiled, lambda f, s: cbva_loss(f, s, labels, sizes, clip_feats, counts)):
        f, s = frames.clone().requires_grad_(True), segments.clone().requires_grad_(True)
        loss, mean_segments = run(f, s)
        loss.backward()
        results.append((loss, mean_segments, f.grad, s.grad))
    for got, want in zip(*results, strict=True):
        assert_close(got, want)


def test_cbva_loss_forward_and_backward_compile_without_graph_breaks():
    _check_compiled_cbva("aot_eager", "cpu")


@pytest.mark.cuda
def test_cbva_loss_compiles_with_inductor_on_cuda():
    _check_compiled_cbva("inductor", "cuda")
