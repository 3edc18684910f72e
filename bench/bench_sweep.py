"""`make bench` section: the cost of running trials through Ray Tune.

sweep_overhead = wall time of an N-trial grid sweep through Ray Tune, 2 trials at a time on 2
CPUs (the whole `run_sweep` call: Ray start, MLflow parent/child runs, per-epoch reports with
checkpoints), divided by half the sum of the same trials' training times when run back to back
in this process without Ray (1 thread each, as each trial gets 1 CPU). 1.0 means Tune adds
nothing over perfect 2-way parallelism; target <= 1.15. Full: 8 trials on the `small`
synthetic set, 2 epochs each; quick: 4 trials on `tiny`, 1 epoch.

asha_reuse_actors_speedup = wall time of an ASHA search sweep with `reuse_actors: false` over
the same sweep with `reuse_actors: true` (a finished or stopped trial's worker process runs the
next trial). Same seed, so the same trials; > 1 means reusing workers saves time.

sweep_trial_slowdown and sweep_fixed_s split sweep_overhead: how much slower a trial runs inside
the sweep than back to back, and what the sweep costs besides its trials.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml

from data_tools.synth import PRESETS, synthesize
from msc_platform.run.config import apply_overrides
from msc_platform.run.train import train
from msc_platform.sweeps.runner import load_sweep_spec, run_sweep
from msc_platform.sweeps.spec import trial_config

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO_ROOT / "experiments" / "configs" / "synthetic.yaml"
TARGET = 1.15


def _sizes(quick: bool) -> dict:
    if quick:
        tiny = PRESETS["tiny"]
        return {"preset": "tiny", "trials": 4, "epochs": 1, "batch": 8,
                "overrides": {"model.text_dim": tiny.text_dim, "model.video_dim": tiny.video_dim,
                              "model.hidden": 32, "model.heads": 2}}
    return {"preset": "small", "trials": 8, "epochs": 2, "batch": 64, "overrides": {}}


def _write_spec(folder: Path, data_root: Path, sizes: dict) -> Path:
    """A grid spec of `trials` rows (different sim_thr / vl_coef), one seed, no scheduler."""
    rows = {f"r{i}": {"model.sim_thr": round(0.6 + 0.04 * i, 2), "model.vl_coef": 0.05 * (i + 1)}
            for i in range(sizes["trials"])}
    spec = {"name": "bench", "base_config": str(BASE_CONFIG),
            "overrides": {"data.root": str(data_root), "data.synthetic_preset": None,
                          "train.epochs": sizes["epochs"], "train.batch_size": sizes["batch"],
                          "train.device": "cpu", "train.progress": False,
                          "tracking.experiment": "bench-sweep", "tracking.log_checkpoint": False,
                          **sizes["overrides"]},
            "max_concurrent_trials": 2, "max_failures": 0, "resources": {"cpu": 1, "gpu": 0},
            "rows": rows, "seeds": [0]}
    path = folder / "bench_sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _sequential_seconds(spec, folder: Path, uri: str) -> list[float]:
    """Train every trial of `spec` back to back in this process, 1 thread; seconds per trial."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seconds = []
    try:
        for index, row in enumerate(spec.rows):
            cfg = trial_config(spec, {"row": row, "train.seed": spec.seeds[0]})
            cfg = apply_overrides(cfg, {"tracking.uri": uri, "tracking.experiment": "bench-sequential"})
            start = time.perf_counter()
            train(cfg, folder / f"sequential_{index}")
            seconds.append(time.perf_counter() - start)
        return seconds
    finally:
        torch.set_num_threads(threads)


def _sweep_seconds(spec, folder: Path) -> tuple[float, int]:
    start = time.perf_counter()
    outcome = run_sweep(spec, storage=str(folder / "ray"), verbose=0)
    done = sum(trial.status == "TERMINATED" for trial in outcome.trials)
    return time.perf_counter() - start, done


def _trial_seconds_in_sweep(storage: Path) -> list[float]:
    """Each trial's own time inside the sweep (Tune's time_total_s at its last result: from the
    trial function's start, in its worker, to its last epoch)."""
    seconds = []
    for path in storage.glob("*/*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        seconds.append(rows[-1]["time_total_s"])
    return seconds


def _asha_spec(folder: Path, data_root: Path, sizes: dict, reuse: bool):
    """The grid spec's base turned into an ASHA search over sim_thr and vl_coef (seed 0)."""
    spec = yaml.safe_load(_write_spec(folder, data_root, sizes).read_text())
    spec.pop("rows"), spec.pop("seeds")
    spec.update({"name": f"bench-asha-reuse-{reuse}", "num_samples": sizes["trials"], "seed": 0,
                 "reuse_actors": reuse, "scheduler": {"type": "asha", "grace_period": 1,
                                                     "reduction_factor": 2},
                 "space": {"model.sim_thr": {"uniform": [0.6, 0.9]},
                           "model.vl_coef": {"loguniform": [0.01, 1.0]}}})
    spec["overrides"]["train.epochs"] = sizes["epochs"] + 1  # room for ASHA to stop some
    path = folder / f"asha_{reuse}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_sweep_spec(path)


def _reuse_rows(folder: Path, sizes: dict) -> list[dict]:
    seconds = {}
    for reuse in (False, True):
        seconds[reuse], done = _sweep_seconds(_asha_spec(folder, folder / "data", sizes, reuse),
                                              folder / f"asha_{reuse}")
        if done != sizes["trials"]:
            return [{"name": "asha_reuse_actors_speedup", "value": None, "unit": "x",
                     "target": None, "ok": False, "note": f"reuse={reuse}: {done} finished"}]
    speedup = seconds[False] / seconds[True]
    return [{"name": "asha_reuse_actors_speedup", "value": speedup, "unit": "x", "target": "> 1",
             "ok": speedup > 1, "note": f"{sizes['trials']} ASHA trials: fresh workers "
             f"{seconds[False]:.1f}s, reused {seconds[True]:.1f}s"}]


def run(quick: bool) -> list[dict]:
    """Measure sweep_overhead; returns bench rows (see bench/run.py)."""
    sizes = _sizes(quick)
    with tempfile.TemporaryDirectory(prefix="msc_bench_sweep_") as tmp:
        folder = Path(tmp)
        synthesize(folder / "data", collection="synthetic", preset=sizes["preset"], seed=0)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        previous = os.environ.get("MLFLOW_TRACKING_URI")
        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            spec = load_sweep_spec(_write_spec(folder, folder / "data", sizes))
            per_trial = _sequential_seconds(spec, folder, uri)
            swept, done = _sweep_seconds(spec, folder)
            in_sweep = _trial_seconds_in_sweep(folder / "ray")
            reuse_rows = _reuse_rows(folder, sizes)
        finally:
            if previous is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous
    return [*_overhead_rows(sizes, swept, done, per_trial, in_sweep), *reuse_rows]


def _overhead_rows(sizes: dict, swept: float, done: int, per_trial: list[float],
                   in_sweep: list[float]) -> list[dict]:
    """sweep_overhead and where it goes: the trials' own slowdown inside the sweep, and the
    rest (Ray start and shutdown, the parent run, the gaps between trials)."""
    sequential = sum(per_trial)
    ratio = swept / (sequential / 2)
    mean_in_sweep, mean_alone = sum(in_sweep) / len(in_sweep), sequential / len(per_trial)
    fixed = swept - sum(in_sweep) / 2
    note = (f"{sizes['trials']} trials x {sizes['epochs']} epochs ({sizes['preset']}), "
            f"{done} finished; sweep {swept:.1f}s vs back-to-back {sequential:.1f}s")
    return [
        {"name": "sweep_overhead", "value": ratio, "unit": "x", "target": f"<= {TARGET}",
         "ok": ratio <= TARGET and done == sizes["trials"], "note": note},
        {"name": "sweep_wall_s", "value": swept, "unit": "s", "target": None, "ok": None,
         "note": "whole run_sweep call, Ray start included"},
        {"name": "sweep_sequential_s", "value": sequential, "unit": "s", "target": None,
         "ok": None, "note": "same trials back to back, no Ray, 1 thread"},
        {"name": "sweep_trial_slowdown", "value": mean_in_sweep / mean_alone, "unit": "x",
         "target": None, "ok": None, "note": f"a trial's mean time inside the sweep "
         f"({mean_in_sweep:.1f}s, 2 at a time) over its mean time back to back "
         f"({mean_alone:.1f}s)"},
        {"name": "sweep_fixed_s", "value": fixed, "unit": "s", "target": None, "ok": None,
         "note": "sweep wall time less half the trials' own times: Ray start and shutdown, "
                 "the parent run, waits between trials"},
    ]
