"""Model section of `make bench`: cost of MSC's extra losses over the base loss.

A train step here is forward + all loss terms + backward (no optimiser update), on the
paper-size network (D=384, 4 heads, 768-d features) and one synthetic batch of B videos with
5 captions each. MSC = TCP + adaptive CBVA; base = tcp off, cbva off; the same model and batch.
Steps are timed interleaved (MSC, base, MSC, ...) after a warm-up; medians are reported.
Peak memory is the growth of the process's peak RSS over one step, measured in a fresh
subprocess per variant: VmHWM of /proc/self/status (ru_maxrss where /proc is missing; after a
fork ru_maxrss starts from the parent's RSS, so it would hide a smaller child's peak).
Timing uses one intra-op thread: on the shared 2-core machine two OpenMP threads contend with
other processes and step times scatter by +-30%.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from model.config import MSCConfig
from model.losses import msc_loss
from model.network import MSC
from tests.model.batch_factory import make_batch

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = 5
RATIO_TARGET = 1.10


def _configs() -> dict[str, MSCConfig]:
    """The full MSC configuration and its base-loss-only twin."""
    full = MSCConfig(tcp=True, cbva="adaptive").validate()
    return {"msc": full, "base": replace(full, tcp=False, cbva="off")}


def _setup(videos: int, seed: int = 0):
    """Paper-size model (train mode) and a synthetic batch of `videos` videos."""
    torch.manual_seed(seed)
    model = MSC(MSCConfig()).train()
    batch = make_batch(videos=videos, captions=CAPTIONS, video_dim=768, text_dim=768, seed=seed)
    return model, batch


def _train_step(model: MSC, cfg: MSCConfig, batch: dict) -> tuple[float, float]:
    """One forward + loss + backward; returns its (wall, process CPU) time in seconds."""
    model.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter(), time.process_time()
    total, _ = msc_loss(cfg, model(batch), batch, model, hard_negatives=False)
    total.backward()
    return time.perf_counter() - wall, time.process_time() - cpu


def _time_steps(videos: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Interleaved (wall, CPU) step times of both variants after one warm-up step each,
    with one intra-op thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, batch = _setup(videos)
        configs = _configs()
        for cfg in configs.values():
            _train_step(model, cfg, batch)
        times = {name: [] for name in configs}
        for _ in range(rounds):
            for name, cfg in configs.items():
                times[name].append(_train_step(model, cfg, batch))
    finally:
        torch.set_num_threads(threads)
    return times


def _loss_only_cpu(videos: int, rounds: int) -> dict[str, float]:
    """Median CPU time of msc_loss forward + backward alone, on fixed encoder outputs (leaf
    tensors), per variant: the part of a step that differs between MSC and base."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, batch = _setup(videos)
        with torch.no_grad():
            encoded = model(batch)
        medians = {}
        for name, cfg in _configs().items():
            samples = []
            for _ in range(rounds + 1):
                out = {key: value.detach().requires_grad_() for key, value in encoded.items()}
                start = time.process_time()
                msc_loss(cfg, out, batch, model, hard_negatives=False)[0].backward()
                samples.append(time.process_time() - start)
            medians[name] = statistics.median(samples[1:])
    finally:
        torch.set_num_threads(threads)
    return medians


def _peak_memory_mb(variant: str, videos: int) -> float:
    """Peak-RSS growth (MiB) of one train step of `variant`, measured in a fresh subprocess."""
    command = [sys.executable, "-m", "bench.bench_model", "--memory", variant, "--videos", str(videos)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"])


def _peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (VmHWM; ru_maxrss without /proc)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure_memory(variant: str, videos: int) -> None:
    """Subprocess body: set up, note the peak RSS, run one step, print the growth as JSON."""
    model, batch = _setup(videos)
    before = _peak_rss_mb()
    _train_step(model, _configs()[variant], batch)
    print(json.dumps({"peak_mb": _peak_rss_mb() - before}))


def _row(name, value, unit, note, target=None, ok=None) -> dict:
    return {"name": name, "value": value, "unit": unit, "target": target, "ok": ok, "note": note}


def _median(samples: list[tuple[float, float]], which: int) -> float:
    return statistics.median(sample[which] for sample in samples)


def run(quick: bool) -> list[dict]:
    """Benchmark rows: MSC/base step-time ratio, both step times, both peak-memory growths."""
    videos, rounds = (8, 2) if quick else (32, 3)
    times = _time_steps(videos, rounds)
    msc_cpu, base_cpu = _median(times["msc"], 1), _median(times["base"], 1)
    msc_wall, base_wall = _median(times["msc"], 0), _median(times["base"], 0)
    ratio = msc_cpu / base_cpu
    setting = (f"B={videos} videos x {CAPTIONS} captions, D=384, 1 thread, median of {rounds} "
               f"interleaved steps")
    rows = [
        _row("model/msc_over_base_step_ratio", ratio, "x", "process CPU time; " + setting,
             f"<= {RATIO_TARGET}", ratio <= RATIO_TARGET),
        _row("model/msc_over_base_step_ratio_wall", msc_wall / base_wall, "x",
             "wall time (noisy on a shared machine); " + setting),
        _row(f"model/msc_step_B{videos}", msc_cpu, "s",
             f"forward + all losses + backward, CPU time (wall {msc_wall:.2f} s); " + setting),
        _row(f"model/base_step_B{videos}", base_cpu, "s",
             f"forward + base loss + backward, CPU time (wall {base_wall:.2f} s); " + setting),
    ]
    losses = _loss_only_cpu(videos, rounds=5)
    extra = losses["msc"] - losses["base"]
    rows.append(_row("model/msc_over_base_step_ratio_from_losses", 1 + extra / base_cpu, "x",
                     f"1 + (MSC loss - base loss, forward + backward on fixed encoder outputs: "
                     f"{losses['msc']:.3f} - {losses['base']:.3f} s) / base step; " + setting,
                     f"<= {RATIO_TARGET}", 1 + extra / base_cpu <= RATIO_TARGET))
    for variant in ("msc", "base"):
        rows.append(_row(f"model/{variant}_step_peak_rss_B{videos}", _peak_memory_mb(variant, videos),
                         "MiB", "peak-RSS (VmHWM) growth over one step, fresh subprocess, "
                         f"default threads; B={videos}"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description="memory probe of one train step (used by run)")
    parser.add_argument("--memory", choices=("msc", "base"), required=True)
    parser.add_argument("--videos", type=int, default=32)
    args = parser.parse_args()
    _measure_memory(args.memory, args.videos)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
