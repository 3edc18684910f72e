"""`make bench` section bench_accel: parameter count, and the accelerated training paths.

Rows:
- `params_paper_size`: parameters of MSC at the paper's size (768-d video and text, D=384,
  4 heads); the released model has 30,660,640.
- `step_ms_fp32_b{B}`, `step_ms_bf16_b{B}`, `step_ms_compile_b{B}`, `step_ms_compile_bf16_b{B}`:
  our training step (forward + every loss + backward + BertAdam, train mode) as `msc train`
  runs it with `train.bf16` and/or `train.compile` (inductor), B videos x 5 captions, one
  thread, median of 5 interleaved rounds in rotating order, after two steps of each path
  (the compile happens there) and a warm-up round.
- `bf16_speedup`, `compile_speedup`: the fp32 eager step over the bf16 / compiled step.
- `best_accelerated_vs_released_algorithm`: the fastest accelerated step over the released
  code's algorithm (bench/released_algorithm.py, the same weights and batch), timed in the same
  rounds; target <= 0.5.
The process keeps freed memory for reuse (msc_platform.run.runtime), as `msc train` does, for
every path alike.
"""
from __future__ import annotations

import statistics
from functools import partial

import torch

from bench.bench_step import CAPTIONS, FEATURE_DIM, LR, interleaved_times, our_step
from bench.released_algorithm import build_reference, released_batch, released_step
from bench.released_optim import build_loop_optimizer
from model.config import MSCConfig
from model.network import MSC
from model.optim import build_optimizer
from msc_platform.run.runtime import keep_freed_memory
from msc_platform.run.train import forward_loss
from tests.model.batch_factory import make_batch

PAPER_PARAMS = 30_660_640
RATIO_TARGET = 0.5
CPU = torch.device("cpu")
PATHS = {"fp32": (False, False), "bf16": (True, False), "compile": (False, True),
         "compile_bf16": (True, True)}


def _row(name, value, unit, note, target=None, ok=None) -> dict:
    return {"name": name, "value": value, "unit": unit, "target": target, "ok": ok, "note": note}


def _path_step(cfg: MSCConfig, batch: dict, bf16: bool, compiled: bool):
    """(a fresh model, its step function) for one path: bench_step.our_step with a new
    optimiser, autocast when `bf16`, forward_loss compiled by inductor when `compiled`."""
    torch.manual_seed(0)
    model = MSC(cfg).train()
    forward = torch.compile(forward_loss, backend="inductor") if compiled else forward_loss
    tensors = {key: value for key, value in batch.items() if torch.is_tensor(value)}
    return model, partial(our_step, model, build_optimizer(model, lr=LR), tensors, bf16=bf16,
                          forward=forward)


def _released_step(model, cfg: MSCConfig, batch: dict):
    reference = build_reference(model).train()
    optimizer = build_loop_optimizer(reference, lr=LR)
    loop_batch = released_batch(batch)
    return lambda: released_step(reference, cfg, optimizer, loop_batch)


def time_paths(videos: int, rounds: int, paths: dict) -> dict[str, list[float]]:
    """Step times of every path and of the released algorithm, one thread, interleaved as in
    bench_step (a warm-up round, then `rounds` rounds in rotating order). Each path first takes
    two steps on its own: compilation and autotuning happen there."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = MSCConfig(tcp=True, cbva="adaptive").validate()
        batch = make_batch(videos=videos, captions=CAPTIONS, video_dim=FEATURE_DIM,
                           text_dim=FEATURE_DIM, seed=0)
        steps = {}
        for name, (bf16, compiled) in paths.items():
            model, steps[name] = _path_step(cfg, batch, bf16, compiled)
            for _ in range(2):
                steps[name]()
        steps["released"] = _released_step(model, cfg, batch)
        return interleaved_times(steps, rounds, CPU)
    finally:
        torch.set_num_threads(previous)


def run(quick: bool) -> list[dict]:
    """Rows of this section; `quick` times B=4, one round, without the compiled paths."""
    keep_freed_memory()
    params = sum(p.numel() for p in MSC(MSCConfig()).parameters())
    rows = [_row("params_paper_size", params, "params", "MSC at 768-d features, D=384, 4 heads",
                 f"= {PAPER_PARAMS:,}", params == PAPER_PARAMS)]
    videos, rounds = (4, 1) if quick else (32, 5)
    paths = {k: v for k, v in PATHS.items() if not (quick and v[1])}
    times = {name: statistics.median(values) for name, values in
             time_paths(videos, rounds, paths).items()}
    setting = (f"B={videos} videos x {CAPTIONS} captions, 768-d, D=384, 4 heads, 1 thread, median "
               f"of {rounds} interleaved rounds after a warm-up round, the order rotated every round")
    for name in paths:
        rows.append(_row(f"step_ms_{name}_b{videos}", times[name] * 1e3, "ms",
                         f"our step, path {name}; " + setting))
    rows.append(_row("bf16_speedup", times["fp32"] / times["bf16"], "x",
                     "fp32 eager step / bf16 autocast step; " + setting))
    if "compile" in times:
        rows.append(_row("compile_speedup", times["fp32"] / times["compile"], "x",
                         "fp32 eager step / torch.compile (inductor) fp32 step; " + setting))
    best = min(paths.keys() - {"fp32"}, key=times.get)
    ratio = times[best] / times["released"]
    rows.append(_row("best_accelerated_vs_released_algorithm", ratio, "x",
                     f"{best} step / released algorithm step ({times[best] * 1e3:.0f} / "
                     f"{times['released'] * 1e3:.0f} ms); " + setting,
                     f"<= {RATIO_TARGET}", ratio <= RATIO_TARGET))
    return rows
