"""Bench section: evaluation at TVR scale and training throughput on synthetic.yaml.

- eval_tvr_scale_seconds: chunked scoring and ranking (fused, clip, frame) plus the collapse
  diagnostics for 10,895 queries x 2,179 videos with paper-size (D=384) encoded features on CPU
  (random features: the cost does not depend on the values); run in a child process so its
  peak memory (eval_tvr_scale_peak_rss) is its own.
- eval_encode_videos_per_s: encoding videos with the paper-size TVR network on CPU.
- train_throughput_videos_s: one epoch of `experiments/configs/synthetic.yaml` (no MLflow).
`--quick` shrinks every size.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"
TVR = {"queries": 10_895, "videos": 2_179}
QUICK = {"queries": 1_000, "videos": 200}
EVAL_TARGET_S = 120.0
EVAL_TARGET_GIB = 4.0


def _row(name, value, unit, target=None, ok=None, note=""):
    return {"name": name, "value": value, "unit": unit, "target": target, "ok": ok, "note": note}


def eval_at_scale(queries: int, videos: int, hidden: int = 384, chunk: int = 256) -> dict:
    """Time chunked ranking + diagnostics on random encoded features; returns seconds and RSS."""
    from model.config import MSCConfig
    from msc_platform.run.evaluate import (
        EncodedQueries,
        EncodedVideos,
        diagnostics,
        rank_chunks,
        recall_metrics,
    )

    generator = torch.Generator().manual_seed(0)
    encoded_videos = EncodedVideos(torch.randn(videos, 32, hidden, generator=generator),
                                   torch.randn(videos, 128, hidden, generator=generator),
                                   [f"v{i}" for i in range(videos)])
    index = torch.randint(0, videos, (queries,), generator=generator)
    encoded_queries = EncodedQueries(torch.randn(queries, hidden, generator=generator),
                                     torch.randn(queries, 768, generator=generator), index,
                                     [f"v{int(i)}#{q}" for q, i in enumerate(index)])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    ranks = rank_chunks(encoded_queries, encoded_videos, MSCConfig(), chunk)
    metrics = recall_metrics(ranks) | diagnostics(encoded_queries, encoded_videos)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_rss_gib": peak / 2**20, "features_rss_gib": before / 2**20,
            "SumR": metrics["SumR"]}


def _eval_in_child(sizes: dict) -> dict:
    code = (f"import json; from bench.bench_eval import eval_at_scale; "
            f"print(json.dumps(eval_at_scale({sizes['queries']}, {sizes['videos']})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def encode_throughput(videos: int) -> float:
    """Videos per second through the paper-size TVR video encoders (clips + frames), CPU."""
    from model.network import MSC
    from msc_platform.run.config import load_config

    cfg = load_config(CONFIGS / "tvr.yaml")
    model = MSC(cfg.model).eval()
    clips, frames = torch.randn(videos, 32, 768), torch.randn(videos, 128, 768)
    sizes, mask = torch.full((videos, 32), 4.0), torch.ones(videos, 128)
    with torch.no_grad():
        start = time.perf_counter()
        for first in range(0, videos, 16):
            model.encode_clips(clips[first:first + 16], sizes[first:first + 16])
            model.encode_frames(frames[first:first + 16], mask[first:first + 16])
    return videos / (time.perf_counter() - start)


def train_throughput(quick: bool) -> tuple[float, float]:
    """(videos/s of one training epoch, its seconds) on synthetic.yaml (tiny preset when quick)."""
    from msc_platform.run.config import load_config
    from msc_platform.run.data import prepare_data
    from msc_platform.run.train import train

    overrides = ["train.epochs=1", "train.progress=false", "tracking.enabled=false"]
    with tempfile.TemporaryDirectory() as out:
        if quick:
            overrides += [f"data.root={out}/data", "data.synthetic_preset=tiny",
                          "model.text_dim=32", "model.video_dim=32", "train.batch_size=8"]
        cfg = load_config(CONFIGS / "synthetic.yaml", overrides)
        prepare_data(cfg)  # generation and cache build are not training time
        start = time.perf_counter()
        train(cfg, Path(out) / "run")
        seconds = time.perf_counter() - start
        history = torch.load(Path(out) / "run" / "last.pt", weights_only=False)["history"]
    return history[0]["throughput_videos_s"], seconds


def run(quick: bool) -> list[dict]:
    sizes = QUICK if quick else TVR
    scale = f"{sizes['queries']} queries x {sizes['videos']} videos, D=384"
    result = _eval_in_child(sizes)
    rows = [
        _row("eval_tvr_scale_seconds", result["seconds"], "s", f"<{EVAL_TARGET_S:g}",
             result["seconds"] < EVAL_TARGET_S, scale),
        _row("eval_tvr_scale_peak_rss", result["peak_rss_gib"], "GiB", f"<{EVAL_TARGET_GIB:g}",
             result["peak_rss_gib"] < EVAL_TARGET_GIB,
             f"whole child process; {result['features_rss_gib']:.2f} GiB before ranking"),
        _row("eval_encode_videos_per_s", encode_throughput(16 if quick else 64), "videos/s",
             note="paper-size TVR video encoders, CPU, batch 16"),
    ]
    throughput, seconds = train_throughput(quick)
    rows.append(_row("train_throughput_videos_s", throughput, "videos/s",
                     note=f"synthetic.yaml{' (tiny preset)' if quick else ''}, one epoch "
                          f"incl. eval {seconds:.1f}s"))
    return rows
