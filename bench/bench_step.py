"""`make bench` section bench_step: our full training step against the released code's algorithm.

A step is forward + every loss term + backward + optimiser update, in train mode (dropout on),
at the paper's size: 768-d video and text features, D=384, 4 heads, B videos x 5 captions
(tests.model.batch_factory.make_batch), TCP and adaptive CBVA on, random (not hard) negatives.

- Ours: `MSC` + `model.losses.msc_loss` + `model.optim.build_optimizer`.
- The released algorithm (bench/released_algorithm.py): the per-branch reference network of
  tests/model/released_reference.py, loaded with the same weights through
  `model.interop.to_authors_state_dict`, + the loop losses of bench/released_losses.py + the
  per-parameter optimiser of bench/released_optim.py.

Rows (B = videos, t = intra-op threads):
- `step_ms_b{B}_t{t}`: our step's wall time, median of the interleaved rounds;
- `released_algorithm_step_ms_b{B}_t{t}`: the released algorithm's, same rounds;
- `step_vs_released_algorithm_b{B}_t{t}`: ours / released, the median of the per-round ratios
  (each round times one step of each, back to back, after one warm-up step of each);
- `aten_ops_per_step_b{B}`, `host_reads_per_step_b{B}` and their `released_algorithm_*` twins:
  ATen ops and host reads of one step after a warm-up step (bench/dispatch_count.py says what
  counts as a host read).
With CUDA available the same rows are measured on the GPU too, named with a `_cuda` suffix and
the card in the note. Wall times on a shared machine scatter; the ratio of interleaved steps is
the stable figure.
"""
from __future__ import annotations

import statistics
import time
from functools import partial

import torch

from bench.devices import bench_devices, synchronize
from bench.dispatch_count import DispatchCounter
from bench.released_algorithm import build_reference, released_batch, released_step
from bench.released_optim import build_loop_optimizer
from model.config import MSCConfig
from model.losses import msc_loss
from model.network import MSC
from model.optim import build_optimizer
from tests.model.batch_factory import make_batch

CAPTIONS = 5
FEATURE_DIM = 768
LR = 1e-4
RATIO_TARGET = 0.8
FULL = dict(sizes=(32, 128), threads=(1, 2), rounds=3, count_sizes=(8, 64))
QUICK = dict(sizes=(4,), threads=(1,), rounds=1, count_sizes=(2, 4))


def _to_device(batch: dict, device: torch.device) -> dict:
    """The batch with every tensor moved to `device`."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def _setup(videos: int, device: torch.device, seed: int = 0):
    """Both sides with the same weights and optimisers, and the batch in both layouts."""
    torch.manual_seed(seed)
    cfg = MSCConfig(tcp=True, cbva="adaptive").validate()
    model = MSC(cfg).to(device).train()
    reference = build_reference(model).to(device).train()
    batch = _to_device(make_batch(videos=videos, captions=CAPTIONS, video_dim=FEATURE_DIM,
                                  text_dim=FEATURE_DIM, seed=seed), device)
    ours = partial(our_step, model, cfg, build_optimizer(model, lr=LR), batch)
    released = partial(released_step, reference, cfg, build_loop_optimizer(reference, lr=LR),
                       released_batch(batch))
    return ours, released


def our_step(model: MSC, cfg: MSCConfig, optimizer, batch: dict) -> torch.Tensor:
    """One training step of this project: forward, msc_loss, backward, optimiser update."""
    optimizer.zero_grad(set_to_none=True)
    total, _ = msc_loss(cfg, model(batch), batch, model, hard_negatives=False)
    total.backward()
    optimizer.step()
    return total.detach()


def _seconds(step, device: torch.device) -> float:
    """Wall time of one call of `step`, the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def compare_steps(videos: int, threads: int, rounds: int, device: torch.device) -> dict:
    """Interleaved step times {"ours": [s], "released": [s]} after one warm-up step each, with
    `threads` intra-op threads (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours, released = _setup(videos, device)
        ours(), released()
        times = {"ours": [], "released": []}
        for _ in range(rounds):
            times["ours"].append(_seconds(ours, device))
            times["released"].append(_seconds(released, device))
    finally:
        torch.set_num_threads(previous)
    return times


def count_steps(videos: int, device: torch.device) -> dict[str, DispatchCounter]:
    """ATen ops and host reads of one step of each side, after a warm-up step, on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        counts = {}
        for name, step in zip(("ours", "released"), _setup(videos, device), strict=True):
            step()
            with DispatchCounter() as counter:
                step()
            counts[name] = counter
    finally:
        torch.set_num_threads(previous)
    return counts


def _row(name, value, unit, note, target=None, ok=None) -> dict:
    return {"name": name, "value": value, "unit": unit, "target": target, "ok": ok, "note": note}


def _timing_rows(videos: int, threads: int, rounds: int, device: torch.device, suffix: str,
                 where: str) -> list[dict]:
    """step_ms, released step_ms and their ratio for one (B, threads) setting."""
    times = compare_steps(videos, threads, rounds, device)
    ours_ms = statistics.median(times["ours"]) * 1e3
    released_ms = statistics.median(times["released"]) * 1e3
    ratio = statistics.median(o / r for o, r in zip(times["ours"], times["released"], strict=True))
    tag = f"b{videos}_t{threads}{suffix}"
    setting = (f"B={videos} videos x {CAPTIONS} captions, 768-d features, D=384, 4 heads, train "
               f"mode, {threads} thread(s), {where}; median of {rounds} interleaved rounds after a "
               f"warm-up")
    return [
        _row(f"step_ms_{tag}", ours_ms, "ms", "forward + all losses + backward + BertAdam; " + setting),
        _row(f"released_algorithm_step_ms_{tag}", released_ms, "ms",
             "the released code's algorithm (per-branch network, loop losses, per-parameter "
             "optimiser); " + setting),
        _row(f"step_vs_released_algorithm_{tag}", ratio, "x",
             f"ours / released algorithm ({ours_ms:.0f} / {released_ms:.0f} ms); " + setting,
             f"<= {RATIO_TARGET}", ratio <= RATIO_TARGET),
    ]


def _count_rows(sizes: tuple, device: torch.device, suffix: str, where: str) -> list[dict]:
    """ATen-op and host-read counts of one step, both sides, at each batch size."""
    counts = {videos: count_steps(videos, device) for videos in sizes}
    small, large = sizes
    rows = []
    for videos, by_side in counts.items():
        ours, released = by_side["ours"], by_side["released"]
        steady = videos == large and ours.aten_ops == counts[small]["ours"].aten_ops
        rows += [
            _row(f"aten_ops_per_step_b{videos}{suffix}", ours.aten_ops, "ops",
                 f"ours: ATen ops of one full step (forward, losses, backward, optimiser), {where}",
                 f"= b{small}" if videos == large else None, steady if videos == large else None),
            _row(f"host_reads_per_step_b{videos}{suffix}", ours.host_reads, "reads",
                 f"ours: host reads of one full step {dict(ours.reads)}, {where}", "0",
                 ours.host_reads == 0),
            _row(f"released_algorithm_aten_ops_per_step_b{videos}{suffix}", released.aten_ops, "ops",
                 f"released algorithm: ATen ops of one full step, {where}"),
            _row(f"released_algorithm_host_reads_per_step_b{videos}{suffix}", released.host_reads,
                 "reads", f"released algorithm: host reads of one full step {dict(released.reads)}, "
                 f"{where}"),
        ]
    return rows


def run(quick: bool) -> list[dict]:
    """Bench rows of this section; `quick` times B=4 on one thread and counts at B=2 and 4."""
    plan = QUICK if quick else FULL
    rows = []
    for device, suffix, where in bench_devices():
        thread_counts = plan["threads"] if device.type == "cpu" else (1,)
        for videos in plan["sizes"]:
            for threads in thread_counts:
                rows += _timing_rows(videos, threads, plan["rounds"], device, suffix, where)
        rows += _count_rows(plan["count_sizes"], device, suffix, where)
    return rows
