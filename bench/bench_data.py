"""`make bench` section for data_tools: cached vs on-the-fly batches, cache build time.

Rows:
- loader_speedup_vs_uncached: one training batch of 128 videos (768-d, TVR widths) built from the
  memory-mapped cache vs from the HDF5 files with fixed length + OP-ToMe per video on the fly.
- cache_build_seconds_10k: `build_or_load` (validation + compute + write) for 10,000 synthetic
  videos at the `small` preset's 64-d widths (quick mode: 1,000 videos, said in the note).
- cache_load_seconds_10k: a second `build_or_load` on unchanged files (fingerprint + map).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from data_tools.cache import build_or_load
from data_tools.datasets import H5Source, TrainVideoDataset, collate_train
from data_tools.synth import synthesize

BATCH = 128


def _best_seconds(action, repeats: int) -> float:
    """Best wall time of `repeats` runs of action()."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def _batch_seconds(dataset: TrainVideoDataset, repeats: int) -> float:
    indices = list(range(BATCH))
    return _best_seconds(lambda: collate_train([dataset[i] for i in indices]), repeats)


def _loader_rows(work: Path, quick: bool) -> list[dict]:
    synthesize(work, "bench768", "small", seed=0, train_videos=BATCH, val_videos=8,
               video_dim=768, text_dim=768)
    cache = build_or_load(work, "bench768", work / "cache")
    cached = _batch_seconds(TrainVideoDataset(cache, "optome"), 3 if quick else 5)
    uncached = _batch_seconds(TrainVideoDataset(H5Source(work, "bench768"), "optome"), 1 if quick else 2)
    speedup = uncached / cached
    return [{"name": "loader_speedup_vs_uncached", "value": speedup, "unit": "x", "target": ">= 20",
             "ok": speedup >= 20,
             "note": f"batch of {BATCH} videos, 768-d, 1 process: cached {cached * 1e3:.1f} ms, "
                     f"on the fly {uncached * 1e3:.0f} ms"}]


def _build_rows(work: Path, quick: bool) -> list[dict]:
    videos = 1_000 if quick else 10_000
    start = time.perf_counter()
    synthesize(work, "bench10k", "small", seed=0, train_videos=videos - videos // 10,
               val_videos=videos // 10)
    generate = time.perf_counter() - start
    start = time.perf_counter()
    cache = build_or_load(work, "bench10k", work / "cache")
    build = time.perf_counter() - start
    load = _best_seconds(lambda: build_or_load(work, "bench10k", work / "cache"), 3)
    size = f"{videos:,} videos" + (" (quick mode; full run uses 10,000)" if quick else "")
    return [
        {"name": "cache_build_seconds_10k", "value": build, "unit": "s", "target": None, "ok": None,
         "note": f"{size}, 64-d, {len(cache.index.cap_ids):,} captions, validation included; "
                 f"generating the data took {generate:.0f} s"},
        {"name": "cache_load_seconds_10k", "value": load, "unit": "s", "target": None, "ok": None,
         "note": f"{size}: unchanged files, fingerprint + memory maps"},
    ]


def run(quick: bool) -> list[dict]:
    """Benchmark rows of the data section (see the module docstring)."""
    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        return _loader_rows(work, quick) + _build_rows(work, quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
