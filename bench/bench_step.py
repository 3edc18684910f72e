"""`make bench` section bench_step: our full training step against the released code's algorithm.

A step is forward + every loss term + backward + optimiser update, in train mode (dropout on),
at the paper's size: 768-d video and text features, D=384, 4 heads, B videos x 5 captions
(tests.model.batch_factory.make_batch), TCP and adaptive CBVA on, random (not hard) negatives.

- Ours: `MSC` + `model.losses.msc_loss` + `model.optim.build_optimizer`, in fp32 and with
  bf16 autocast.
- The released algorithm (bench/released_algorithm.py): the per-branch reference network of
  tests/model/released_reference.py, loaded with the same weights through
  `model.interop.to_authors_state_dict`, + the loop losses of bench/released_losses.py + the
  per-parameter optimiser of bench/released_optim.py.

Rows (B = videos, t = intra-op threads):
- `step_ms_b{B}_t{t}`: our step's wall time, median of the interleaved rounds;
- `released_algorithm_step_ms_b{B}_t{t}`: the released algorithm's, same rounds;
- `step_vs_released_algorithm_b{B}_t{t}`: ours / released, the median of the per-round ratios
  (each round times one step of each, back to back, after one warm-up step of each);
- `step_ms_bf16_b{B}_t{t}`, `bf16_step_vs_released_algorithm_b{B}_t{t}`: our step with bf16
  autocast (`train.bf16`), timed in the same rounds on its own copy of the model;
- `aten_ops_per_step_b{B}`, `host_reads_per_step_b{B}` and their `released_algorithm_*` twins:
  ATen ops and host reads of one step after a warm-up step (bench/dispatch_count.py says what
  counts as a host read).
With CUDA available the same rows are measured on the GPU too, named with a `_cuda` suffix and
the card in the note. Wall times on a shared machine scatter; the ratio of interleaved steps is
the stable figure.
"""
from __future__ import annotations

import argparse
import copy
import json
import signal
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from bench.devices import bench_devices, release_host_memory, synchronize
from bench.dispatch_count import DispatchCounter
from bench.released_algorithm import build_reference, released_batch, released_step
from bench.released_optim import build_loop_optimizer
from model.config import MSCConfig
from model.network import MSC
from model.optim import build_optimizer
from msc_platform.run.runtime import autocast, keep_freed_memory
from msc_platform.run.train import forward_loss
from tests.model.batch_factory import make_batch

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = 5
FEATURE_DIM = 768
LR = 1e-4
RATIO_TARGET = 0.8
BF16_RATIO_TARGET = 0.5
SIDES = ("ours", "ours_bf16", "released")
# host RAM one CPU step needs, per video (5 captions), measured at paper size: the released
# algorithm's worker peaks at 6.2 GiB at B=48 and 18.5 GiB at B=128 (our step needs less)
STEP_GIB_PER_VIDEO = 0.145
# timed rounds per batch size: a B=128 round takes over two minutes on one CPU thread
FULL = dict(sizes=(32, 128), threads=(1, 2), rounds={32: 5, 128: 3}, count_sizes=(8, 64))
QUICK = dict(sizes=(4,), threads=(1,), rounds={4: 1}, count_sizes=(2, 4))


def _to_device(batch: dict, device: torch.device) -> dict:
    """The batch with every tensor moved to `device`."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def _setup(videos: int, device: torch.device, sides: tuple[str, ...] = SIDES,
           seed: int = 0) -> dict:
    """Step functions of `sides` (of SIDES: our fp32 step, our bf16 step on its own copy of the
    model, the released algorithm), all from the same starting weights, each with its own
    optimiser; the batch in the layout of each."""
    torch.manual_seed(seed)
    cfg = MSCConfig(tcp=True, cbva="adaptive").validate()
    model = MSC(cfg).to(device).train()
    batch = _to_device(make_batch(videos=videos, captions=CAPTIONS, video_dim=FEATURE_DIM,
                                  text_dim=FEATURE_DIM, seed=seed), device)
    steps = {}  # in SIDES order: the order of the interleaved rounds
    if "ours" in sides:
        steps["ours"] = partial(our_step, model, build_optimizer(model, lr=LR), batch)
    if "ours_bf16" in sides:
        bf16_model = copy.deepcopy(model)
        steps["ours_bf16"] = partial(our_step, bf16_model, build_optimizer(bf16_model, lr=LR),
                                     batch, bf16=True)
    if "released" in sides:
        reference = build_reference(model).to(device).train()
        steps["released"] = partial(released_step, reference, cfg,
                                    build_loop_optimizer(reference, lr=LR), released_batch(batch))
    return steps


def our_step(model: MSC, optimizer, batch: dict, bf16: bool = False,
             forward: Callable = forward_loss) -> torch.Tensor:
    """One training step of this project as `msc train` runs it: `forward` (forward_loss, or a
    compiled forward_loss as with train.compile) under bf16 autocast when `bf16` (train.bf16),
    backward, optimiser update. Random (not hard) negatives."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(next(model.parameters()).device, bf16):
        total, _ = forward(model, batch, False)
    total.backward()
    optimizer.step()
    return total.detach()


def step_seconds(step, device: torch.device) -> float:
    """Wall time of one call of `step`, the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def compare_steps(videos: int, threads: int, rounds: int, device: torch.device) -> dict:
    """Interleaved step times {side: [s]} of the SIDES after one warm-up step each, with
    `threads` intra-op threads (restored afterwards). The order rotates every round, so no side
    always runs after the same one. Each side keeps its freed memory for its next step, as `msc
    train` does, unless the sides' peaks together would not fit in RAM (see must_hand_back);
    then freed host memory is handed back after every step, outside the timed span, and every
    side pays the page faults of a cold heap."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    hand_back = must_hand_back(videos, device)
    try:
        times: dict = interleaved_times(_setup(videos, device), rounds, device, hand_back)
    finally:
        torch.set_num_threads(previous)
    times["memory"] = "freed memory handed back after every step" if hand_back else \
        "freed memory kept between steps"
    return times


def interleaved_times(steps: dict[str, Callable], rounds: int, device: torch.device,
                      hand_back: bool = False) -> dict[str, list[float]]:
    """{name: [s] * rounds}: one warm-up round of every step (not kept), then `rounds` rounds of
    one call each. The order rotates every round, so no step always runs after the same one.
    With `hand_back`, freed host memory goes back to the OS after every call, outside the timed
    span."""
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds + 1):
        turn = round_index % len(names)
        for name in names[turn:] + names[:turn]:
            seconds = step_seconds(steps[name], device)
            if hand_back:
                release_host_memory()
            if round_index > 0:
                times[name].append(seconds)
    return times


def must_hand_back(videos: int, device: torch.device) -> bool:
    """Whether the SIDES' CPU step peaks together (STEP_GIB_PER_VIDEO per video each) exceed
    the RAM available now, or the available RAM cannot be told."""
    available, needed = available_gib(), len(SIDES) * STEP_GIB_PER_VIDEO * videos
    return device.type == "cpu" and (available is None or needed > available)


def count_steps(videos: int, device: torch.device) -> dict[str, dict]:
    """ATen ops and host reads of one step of each side, after a warm-up step, on one thread:
    {side: {"aten_ops": n, "reads": {kind: n}}}."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        counts = {}
        steps = _setup(videos, device, sides=("ours", "released"))
        for name, step in steps.items():
            step()
            release_host_memory()
            with DispatchCounter() as counter:
                step()
            release_host_memory()
            counts[name] = {"aten_ops": counter.aten_ops, "reads": dict(counter.reads)}
    finally:
        torch.set_num_threads(previous)
    return counts


def available_gib() -> float | None:
    """MemAvailable of /proc/meminfo in GiB; None where /proc is missing."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024 ** 2
    return None


def memory_shortfall(videos: int, device: torch.device) -> str | None:
    """Why a CPU step of `videos` videos would not fit in the free RAM now, or None when it
    would (or cannot be told)."""
    needed, available = STEP_GIB_PER_VIDEO * videos, available_gib()
    if device.type != "cpu" or available is None or available >= needed:
        return None
    return f"skipped: a step needs about {needed:.0f} GiB of RAM, {available:.1f} GiB available"


def _in_subprocess(arguments: list[str]) -> dict | str:
    """Run this module's worker (`python -m bench.bench_step ...`) in a fresh process, so every
    setting starts with an empty heap; returns its JSON answer, or a one-line failure reason."""
    command = [sys.executable, "-m", "bench.bench_step", *arguments]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode == 0:
        return json.loads(result.stdout.strip().splitlines()[-1])
    if result.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return "killed (SIGKILL: out of memory?)"
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return f"exit {result.returncode}: {tail}"


def _row(name, value, unit, note, target=None, ok=None) -> dict:
    return {"name": name, "value": value, "unit": unit, "target": target, "ok": ok, "note": note}


def _timing_rows(videos: int, threads: int, rounds: int, device: torch.device, suffix: str,
                 where: str) -> list[dict]:
    """Step times of the SIDES and our two ratios to the released algorithm for one
    (B, threads) setting, measured in a fresh process."""
    tag = f"b{videos}_t{threads}{suffix}"
    times = memory_shortfall(videos, device) or _in_subprocess(
        ["--compare", str(videos), str(threads), str(rounds), "--device", device.type])
    if isinstance(times, str):
        names = [f"{prefix}_{tag}" for prefix in ("step_ms", "step_ms_bf16",
                                                   "released_algorithm_step_ms",
                                                   "step_vs_released_algorithm",
                                                   "bf16_step_vs_released_algorithm")]
        return _failed_rows(names, f"B={videos}, {threads} thread(s), {where}: {times}")
    ms = {side: statistics.median(times[side]) * 1e3 for side in SIDES}
    setting = (f"B={videos} videos x {CAPTIONS} captions, 768-d features, D=384, 4 heads, train "
               f"mode, {threads} thread(s), {where}; median of {rounds} interleaved rounds after a "
               f"warm-up, the order rotated every round; {times['memory']}")
    return [
        _row(f"step_ms_{tag}", ms["ours"], "ms",
             "forward + all losses + backward + BertAdam, fp32; " + setting),
        _row(f"step_ms_bf16_{tag}", ms["ours_bf16"], "ms",
             "the same step with bf16 autocast (train.bf16); " + setting),
        _row(f"released_algorithm_step_ms_{tag}", ms["released"], "ms",
             "the released code's algorithm (per-branch network, loop losses, per-parameter "
             "optimiser); " + setting),
        _ratio_row(f"step_vs_released_algorithm_{tag}", "ours", times, ms, RATIO_TARGET, setting),
        _ratio_row(f"bf16_step_vs_released_algorithm_{tag}", "ours_bf16", times, ms,
                   BF16_RATIO_TARGET, setting),
    ]


def _ratio_row(name: str, side: str, times: dict, ms: dict, target: float, setting: str) -> dict:
    """`side` over the released algorithm: the median of the per-round ratios."""
    ratio = statistics.median(o / r for o, r in zip(times[side], times["released"], strict=True))
    return _row(name, ratio, "x", f"{side} / released algorithm ({ms[side]:.0f} / "
                f"{ms['released']:.0f} ms); " + setting, f"<= {target}", ratio <= target)


def _count_rows_at(videos: int, counts: dict, ours_small: int | None, small: int, suffix: str,
                   where: str) -> list[dict]:
    """The four count rows of one batch size; `ours_small` is our op count at the smaller
    size (None at the smaller size itself), the B-independence target of the larger one."""
    ours, released = counts["ours"], counts["released"]
    ours_reads, released_reads = sum(ours["reads"].values()), sum(released["reads"].values())
    steady = None if ours_small is None else ours["aten_ops"] == ours_small
    return [
        _row(f"aten_ops_per_step_b{videos}{suffix}", ours["aten_ops"], "ops",
             f"ours: ATen ops of one full step (forward, losses, backward, optimiser), {where}",
             None if ours_small is None else f"= b{small}", steady),
        _row(f"host_reads_per_step_b{videos}{suffix}", ours_reads, "reads",
             f"ours: host reads of one full step {ours['reads']}, {where}", "0", ours_reads == 0),
        _row(f"released_algorithm_aten_ops_per_step_b{videos}{suffix}", released["aten_ops"], "ops",
             f"released algorithm: ATen ops of one full step, {where}"),
        _row(f"released_algorithm_host_reads_per_step_b{videos}{suffix}", released_reads, "reads",
             f"released algorithm: host reads of one full step {released['reads']}, {where}"),
    ]


def _count_rows(sizes: tuple, device: torch.device, suffix: str, where: str) -> list[dict]:
    """ATen-op and host-read counts of one step, both sides, at the two batch sizes, each size
    counted in a fresh process."""
    small, _ = sizes
    rows, ours_small = [], None
    for videos in sizes:
        counts = memory_shortfall(videos, device) or _in_subprocess(
            ["--count", str(videos), "--device", device.type])
        if isinstance(counts, str):
            rows += _failed_rows([f"{prefix}_per_step_b{videos}{suffix}" for prefix in (
                "aten_ops", "host_reads", "released_algorithm_aten_ops",
                "released_algorithm_host_reads")], f"B={videos}, {where}: {counts}")
            continue
        rows += _count_rows_at(videos, counts, ours_small, small, suffix, where)
        if videos == small:
            ours_small = counts["ours"]["aten_ops"]
    return rows


def _failed_rows(names: list[str], reason: str) -> list[dict]:
    """Rows for a setting that was skipped for memory or whose worker failed: value "skipped" or
    "failed", the reason in the note."""
    value = "skipped" if "skipped:" in reason else "failed"
    return [_row(name, value, "", reason, ok=False) for name in names]


def run(quick: bool) -> list[dict]:
    """Bench rows of this section; `quick` times B=4 on one thread and counts at B=2 and 4."""
    plan = QUICK if quick else FULL
    rows = []
    for device, suffix, where in bench_devices():
        thread_counts = plan["threads"] if device.type == "cpu" else (1,)
        for videos in plan["sizes"]:
            for threads in thread_counts:
                rows += _timing_rows(videos, threads, plan["rounds"][videos], device, suffix,
                                     where)
        rows += _count_rows(plan["count_sizes"], device, suffix, where)
    return rows


def main() -> int:
    """Worker entry point of `_in_subprocess`: one setting, its JSON answer on the last line."""
    parser = argparse.ArgumentParser(description="one bench_step setting (used by run)")
    parser.add_argument("--compare", nargs=3, type=int, metavar=("VIDEOS", "THREADS", "ROUNDS"))
    parser.add_argument("--count", type=int, metavar="VIDEOS")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    device = torch.device(args.device)
    keep_freed_memory()  # as `msc train` runs; the released algorithm, in this process too, gets it
    if args.compare:
        answer = compare_steps(*args.compare, device=device)
    elif args.count:
        answer = count_steps(args.count, device)
    else:
        parser.error("give --compare VIDEOS THREADS ROUNDS or --count VIDEOS")
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
