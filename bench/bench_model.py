"""Model section of `make bench`: cost of MSC's extra losses over the base loss.

A train step here is forward + all loss terms + backward (no optimiser update), on the
paper-size network (D=384, 4 heads, 768-d features) and one synthetic batch of B videos with
5 captions each. MSC = TCP + adaptive CBVA; base = tcp off, cbva off; the same model and batch.
Steps are timed interleaved (MSC, base, MSC, ...) after a warm-up; medians are reported.
Peak memory is the growth of the process's peak RSS (resource.getrusage ru_maxrss) over one
step, measured in a fresh subprocess per variant.
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


def _train_step(model: MSC, cfg: MSCConfig, batch: dict) -> float:
    """One forward + loss + backward; returns its wall time in seconds."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    total, _ = msc_loss(cfg, model(batch), batch, model, hard_negatives=False)
    total.backward()
    return time.perf_counter() - start


def _time_steps(videos: int, rounds: int) -> dict[str, list[float]]:
    """Interleaved step times of both variants after one warm-up step each."""
    model, batch = _setup(videos)
    configs = _configs()
    for cfg in configs.values():
        _train_step(model, cfg, batch)
    times = {name: [] for name in configs}
    for _ in range(rounds):
        for name, cfg in configs.items():
            times[name].append(_train_step(model, cfg, batch))
    return times


def _peak_memory_mb(variant: str, videos: int) -> float:
    """Peak-RSS growth (MiB) of one train step of `variant`, measured in a fresh subprocess."""
    command = [sys.executable, "-m", "bench.bench_model", "--memory", variant, "--videos", str(videos)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"])


def _measure_memory(variant: str, videos: int) -> None:
    """Subprocess body: set up, note ru_maxrss, run one step, print the growth as JSON."""
    model, batch = _setup(videos)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _train_step(model, _configs()[variant], batch)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": (after - before) / 1024}))


def _row(name, value, unit, note, target=None, ok=None) -> dict:
    return {"name": name, "value": value, "unit": unit, "target": target, "ok": ok, "note": note}


def run(quick: bool) -> list[dict]:
    """Benchmark rows: MSC/base step-time ratio, both step times, both peak-memory growths."""
    videos, rounds = (8, 2) if quick else (32, 5)
    times = _time_steps(videos, rounds)
    msc, base = statistics.median(times["msc"]), statistics.median(times["base"])
    ratio = msc / base
    setting = (f"B={videos} videos x {CAPTIONS} captions, D=384, {rounds} interleaved steps, "
               f"median, {torch.get_num_threads()} threads")
    rows = [
        _row("model/msc_over_base_step_ratio", ratio, "x", setting, f"<= {RATIO_TARGET}",
             ratio <= RATIO_TARGET),
        _row(f"model/msc_step_B{videos}", msc, "s", "forward + losses + backward; " + setting),
        _row(f"model/base_step_B{videos}", base, "s", "forward + base loss + backward; " + setting),
    ]
    for variant in ("msc", "base"):
        rows.append(_row(f"model/{variant}_step_peak_rss_B{videos}", _peak_memory_mb(variant, videos),
                         "MiB", "ru_maxrss growth over one step in a fresh subprocess"))
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
