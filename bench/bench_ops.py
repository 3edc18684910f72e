"""`make bench` section: the batched merge ops and CBVA against the released code's loops.

Rows: `ops_speedup_vs_released_loops_b128` (closure + segment count + loss-side merging + CBVA
forward and backward: the released algorithm's per-video loops of bench/released_losses.py over
our batched ops), `aten_ops_b8`, `aten_ops_b64` (ATen ops dispatched by the batched forward) and
`aten_ops_equal` (the op count does not grow with the batch). The spec-by-spec loop oracles of
tests/model/oracles.py are slower still; they are test oracles, not a baseline.
"""
from __future__ import annotations

import statistics
import time

import torch

from bench import released_losses
from bench.devices import bench_devices, synchronize
from bench.dispatch_count import DispatchCounter
from model.cbva import cbva_loss
from model.merge import closure_ratio, l2_normalize, order_preserving_merge, segment_count

HIDDEN, CLIP_DIM, FRAMES, SEGMENTS = 384, 768, 128, 32
SIM_THR = 0.8


def _clip_features(gen: torch.Generator, batch: int) -> torch.Tensor:
    """Clip features whose similarity structure spreads the segment counts over {5, .., 32}:
    per video one tight cluster of a random number of tokens, the rest random directions."""
    feats = torch.randn(batch, SEGMENTS, CLIP_DIM, generator=gen)
    centres = torch.randn(batch, 1, CLIP_DIM, generator=gen)
    members = torch.randint(1, SEGMENTS + 1, (batch, 1), generator=gen)
    in_cluster = torch.rand(batch, SEGMENTS, generator=gen).argsort(dim=1) < members  # [B, 32]
    tight = centres + 0.05 * torch.randn(batch, SEGMENTS, CLIP_DIM, generator=gen)
    return l2_normalize(torch.where(in_cluster.unsqueeze(-1), tight, feats))


def make_inputs(batch: int, seed: int = 0) -> dict:
    """Paper-sized inputs: projected frames [B, 128, 384], segments [B, 32, 384], OP-ToMe layout."""
    gen = torch.Generator().manual_seed(seed)
    _, sizes, labels = order_preserving_merge(torch.randn(batch, FRAMES, 16, generator=gen))
    return dict(frames=0.1 * torch.randn(batch, FRAMES, HIDDEN, generator=gen),
                segments=0.1 * torch.randn(batch, SEGMENTS, HIDDEN, generator=gen),
                labels=labels, sizes=sizes, clip_feats=_clip_features(gen, batch))


def batched_step(inputs: dict, backward: bool = True) -> torch.Tensor:
    """Adaptive CBVA with the batched ops: omega, counts, merging, both terms (and backward)."""
    frames = inputs["frames"].detach().requires_grad_(backward)
    segments = inputs["segments"].detach().requires_grad_(backward)
    counts = segment_count(closure_ratio(inputs["clip_feats"], SIM_THR))
    loss, _ = cbva_loss(frames, segments, inputs["labels"], inputs["sizes"], inputs["clip_feats"], counts)
    if backward:
        loss.backward()
    return loss.detach()


def released_loops_step(inputs: dict) -> torch.Tensor:
    """The same step as the released code runs it: a closure loop and a merge-and-align loop
    per video (bench/released_losses.py)."""
    frames = inputs["frames"].detach().requires_grad_(True)
    segments = inputs["segments"].detach().requires_grad_(True)
    ratios = released_losses.diversity_ratios(inputs["clip_feats"], SIM_THR)
    loss, _ = released_losses.cbva(frames, segments, inputs["labels"], inputs["sizes"].unsqueeze(-1),
                                   inputs["clip_feats"], ratios)
    loss.backward()
    return loss.detach()


def _seconds(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of `repeats` calls after one warm-up call, the device drained."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def aten_op_count(batch: int) -> int:
    """ATen ops dispatched by one batched forward (closure + counts + merging + CBVA)."""
    inputs = make_inputs(batch)
    with DispatchCounter() as counter:
        batched_step(inputs, backward=False)
    return counter.aten_ops


def _row(name, value, unit, target=None, ok=None, note="") -> dict:
    return {"name": name, "value": value, "unit": unit, "target": target, "ok": ok, "note": note}


def run(quick: bool) -> list[dict]:
    """Bench rows of this section, timed on one intra-op thread (both sides alike: the shared
    2-core machine makes multi-threaded kernels erratic); `quick` uses B=16 instead of 128.
    With CUDA available the timing rows are measured on the GPU too (`_cuda` suffix)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(16 if quick else 128, quick)
    finally:
        torch.set_num_threads(threads)


def _speed_rows(batch: int, quick: bool, device: torch.device, suffix: str, where: str) -> list[dict]:
    """Time the batched and released-loop steps at `batch` videos on `device` (medians after a
    warm-up call each); their losses must agree."""
    inputs = {key: value.to(device) for key, value in make_inputs(batch).items()}
    repeats = 1 if quick else 3
    fast_s = _seconds(lambda: batched_step(inputs), 3 if quick else 10, device)
    loop_s = _seconds(lambda: released_loops_step(inputs), repeats, device)
    gap = float((batched_step(inputs) - released_loops_step(inputs)).abs())
    speedup = loop_s / fast_s
    note = (f"B={batch}, D={HIDDEN}, Dc={CLIP_DIM}, {where}; batched {fast_s * 1e3:.1f} ms, released "
            f"loops {loop_s * 1e3:.0f} ms (median of {repeats}), |loss gap| {gap:.1e}; "
            f"{torch.get_num_threads()} thread(s)")
    return [
        _row(f"ops_speedup_vs_released_loops_b128{suffix}", speedup, "x", note=note),
        _row(f"ops_batched_ms_b128{suffix}", fast_s * 1e3, "ms",
             note=f"B={batch}, forward + backward, {where}"),
    ]


def _measure(batch: int, quick: bool) -> list[dict]:
    """Speed rows on every bench device, then ATen op counts at B=8 and B=64 (CPU)."""
    rows = []
    for device, suffix, where in bench_devices():
        rows += _speed_rows(batch, quick, device, suffix, where)
    ops_small, ops_large = aten_op_count(8), aten_op_count(64)
    return rows + [
        _row("aten_ops_b8", ops_small, "ops", note="forward: closure + counts + merging + CBVA"),
        _row("aten_ops_b64", ops_large, "ops", "= b8", ops_large == ops_small),
        _row("aten_ops_equal", ops_small == ops_large, "bool", "True", ops_small == ops_large),
    ]
