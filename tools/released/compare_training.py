"""Train the authors' released MSC code and this project on the same generated data set and
print both validation SumR curves, per seed and epoch.

Released code: admins97/MSC_PRVR at commit 0b3e3d108ee08eaa336e21d93ba44103f27f2efc, fetched by
you and passed with --released-src (never copied or edited; released_env.py makes it run on CPU).

Data: the synthetic `small` preset (data_tools.synth) generated as collection `tvr`, so it has
the TVR release layout and 768-d features, under --data-root.

Released side: one subprocess per seed runs its own `main()` (hence its train_one_epoch and
val_one_epoch) with its command-line defaults (sim_thr 0.5, RKD 10/20) and its TVR config file,
patched only in where things live (data and result folders), hidden_size, n_heads, n_epoch,
seed and num_workers 0. Its TVR loader reads query-timestamp files at a fixed absolute path
(tvr_{train,val}_release.jsonl); the worker writes stand-ins for them from the caption files and
points the loader there (the timestamps are not used by the model or the losses).

Project side: msc_platform.run.train.train with experiments/configs/tvr_released.yaml (the same
hyperparameters) at the same hidden size, epochs and seed, on CPU, tracking off.

    python tools/released/compare_training.py --released-src /path/to/MSC_PRVR \\
        --seeds 9527 9528 9529 --epochs 6 --json runs/compare_training/curves.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from released_env import RELEASED_COMMIT  # noqa: E402

PROJECT_CONFIG = REPO_ROOT / "experiments" / "configs" / "tvr_released.yaml"
DEFAULT_WORK_DIR = Path("runs") / "compare_training"
COLLECTION = "tvr"
CURVE_PREFIX = "CURVE "
CODES = {"released": "released code", "project": "this project"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--released-src", help=f"checkout of the released code (commit {RELEASED_COMMIT}); "
                        "needed unless --only project")
    parser.add_argument("--seeds", type=int, nargs="+", default=[9527, 9528, 9529])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--data-root", default=str(DEFAULT_WORK_DIR / "data"),
                        help="where the synthetic `tvr` collection is (generated on first use)")
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR),
                        help="results, checkpoints and logs of both sides")
    parser.add_argument("--only", choices=("released", "project", "both"), default="both")
    parser.add_argument("--json", help="also write the curves and settings to this JSON file")
    parser.add_argument("--preset", choices=("tiny", "small"), default="small",
                        help="synthetic preset (small: the comparison; tiny: a smoke test)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--released-worker", type=int, metavar="SEED", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only != "project" and not args.released_src:
        parser.error("--released-src is needed to run the released code (or pass --only project)")
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    return args


def ensure_data(data_root: Path, preset: str):
    """The synthetic `tvr` collection under data_root, generated on first use."""
    from data_tools.synth import ensure_synthetic
    try:
        return ensure_synthetic(data_root, preset=preset, seed=0, collection=COLLECTION)
    except FileExistsError as err:
        raise SystemExit(f"--data-root {data_root}: {err}") from None


def print_epoch(code: str, seed: int, epoch: int, sumr: float) -> None:
    print(f"[{CODES[code]}, seed {seed}] epoch {epoch}: val SumR {sumr:.1f}", flush=True)


# ---------------------------------------------------------------- released side (subprocess)

def write_query_files(collection, folder: Path) -> None:
    """Stand-ins for the released TVR loader's tvr_{train,val}_release.jsonl: one line per
    caption with its text and placeholder timestamps (the model and losses never read them)."""
    from data_tools.layout import read_captions
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        lines = [json.dumps({"desc": c.text.rstrip(), "duration": 1.0, "ts": [0.0, 1.0]})
                 for c in read_captions(collection.caption_file(split))]
        (folder / f"tvr_{split}_release.jsonl").write_text("\n".join(lines) + "\n")


def redirect_query_files(builder, folder: Path) -> None:
    """Make the released dataset builder read the query files from `folder` instead of its
    hard-coded absolute location (same file names)."""
    def redirected(cls):
        class Redirected(cls):
            def __init__(self, *args, path_query_json=None, **kwargs):
                if path_query_json is not None:
                    path_query_json = str(folder / Path(path_query_json).name)
                super().__init__(*args, path_query_json=path_query_json, **kwargs)
        return Redirected

    builder.Dataset4PRVR = redirected(builder.Dataset4PRVR)
    builder.TxtDataSet4PRVR = redirected(builder.TxtDataSet4PRVR)


def patch_released_config(cfg: dict, args, result_root: Path) -> None:
    """Point the released TVR config at our data and result folders and set the run's sizes."""
    cfg.update(root=str(result_root) + os.sep, data_root=str(Path(args.data_root).resolve()) + os.sep,
               hidden_size=args.hidden, n_heads=args.heads, n_epoch=args.epochs,
               seed=args.released_worker, num_workers=0, pin_memory=False)


def run_released_worker(args) -> None:
    """Inside the subprocess: run the released main() for one seed, printing each epoch's SumR
    and finally the whole curve as one `CURVE {json}` line."""
    import torch
    torch.set_num_threads(1)
    from released_env import prepare
    prepare(args.released_src)
    seed = args.released_worker
    work = Path(args.work_dir).resolve() / "released" / f"seed_{seed}"
    collection = ensure_data(Path(args.data_root).resolve(), args.preset)
    write_query_files(collection, work / "query_files")
    sys.argv = ["main.py", "-d", COLLECTION]  # the README command: its argparse defaults
    import Configs.tvr as tvr_config
    import Datasets.builder as dataset_builder
    patch_released_config(tvr_config.cfg, args, work)
    redirect_query_files(dataset_builder, work / "query_files")
    import main as released_main
    curve: list[float] = []
    original = released_main.val_one_epoch

    def recording_val_one_epoch(epoch, *rest):
        val_meter, best_val, stop = original(epoch, *rest)
        curve.append(float(val_meter[4]))
        print_epoch("released", seed, epoch + 1, curve[-1])
        return val_meter, best_val, stop

    released_main.val_one_epoch = recording_val_one_epoch
    try:
        released_main.main()
    except SystemExit as stop:  # its early stop ends with exit(0)
        if stop.code not in (0, None):
            raise
    print(CURVE_PREFIX + json.dumps({"seed": seed, "sumr": curve}), flush=True)


def released_curve(args, seed: int) -> list[float]:
    """Run the released code for `seed` in a subprocess; its log goes to work_dir/released/.

    Raises RuntimeError naming the seed and the log file when the subprocess fails.
    """
    log_path = Path(args.work_dir).resolve() / "released" / f"seed_{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--released-worker", str(seed),
               "--released-src", args.released_src, "--epochs", str(args.epochs),
               "--data-root", args.data_root, "--work-dir", args.work_dir, "--preset", args.preset,
               "--hidden", str(args.hidden), "--heads", str(args.heads)]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    curve = None
    with open(log_path, "w") as log, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log,
                                                       text=True, env=env) as worker:
        for line in worker.stdout:
            if line.startswith(CURVE_PREFIX):
                curve = json.loads(line[len(CURVE_PREFIX):])["sumr"]
            else:
                print(line, end="", flush=True)
    if worker.returncode != 0 or curve is None:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"released code, seed {seed}: exit code {worker.returncode}; "
                           f"log {log_path}:\n{tail}")
    return curve


# ---------------------------------------------------------------- project side (in process)

def project_config(args, seed: int):
    """tvr_released.yaml at the comparison's size, epochs and seed; CPU, one thread, no MLflow."""
    from msc_platform.run.config import load_config
    overrides = [f"data.collection={COLLECTION}", "data.synthetic_preset=null", "data.num_workers=0",
                 f"model.hidden={args.hidden}", f"model.heads={args.heads}",
                 f"train.epochs={args.epochs}", f"train.seed={seed}", "train.device=cpu",
                 "train.num_threads=1", "train.progress=false", "tracking.enabled=false"]
    return load_config(PROJECT_CONFIG, overrides, data_root=str(Path(args.data_root).resolve()))


def project_curve(args, seed: int) -> list[float]:
    """Train this project for `seed`; returns the validation SumR of every epoch."""
    from msc_platform.run.train import train
    curve: list[float] = []

    def record(report) -> None:
        curve.append(float(report.metrics["SumR"]))
        print_epoch("project", seed, report.epoch + 1, curve[-1])

    out_dir = Path(args.work_dir).resolve() / "project" / f"seed_{seed}"
    train(project_config(args, seed), out_dir, on_epoch=record)
    return curve


# ---------------------------------------------------------------- report

def curve_table(curves: dict[str, dict[int, list[float]]], epochs: int) -> str:
    """Markdown table: one row per seed and code, one column per epoch."""
    header = "| seed | code | " + " | ".join(f"epoch {e}" if e == 1 else str(e)
                                           for e in range(1, epochs + 1)) + " |"
    rows = [header, "|---|---|" + "---|" * epochs]
    seeds = sorted({seed for by_seed in curves.values() for seed in by_seed})
    for seed in seeds:
        for code, by_seed in curves.items():
            if seed in by_seed:
                values = " | ".join(f"{v:.1f}" for v in by_seed[seed])
                rows.append(f"| {seed} | {CODES[code]} | {values} |")
    return "\n".join(rows)


def last_epoch_summary(curves: dict[str, dict[int, list[float]]]) -> dict:
    """Last-epoch SumR per code and seed; with both codes, whether the project lies within the
    released code's seed spread (each seed, and the mean)."""
    last = {code: {seed: values[-1] for seed, values in by_seed.items() if values}
            for code, by_seed in curves.items()}
    summary: dict = {"last_epoch": last}
    for code, values in last.items():
        if values:
            summary[f"{code}_mean"] = sum(values.values()) / len(values)
    released, project = last.get("released"), last.get("project")
    if released and project:
        low, high = min(released.values()), max(released.values())
        summary.update(released_range=[low, high],
                       project_seeds_within=sum(low <= v <= high for v in project.values()),
                       project_mean_within=low <= summary["project_mean"] <= high)
    return summary


def summary_text(summary: dict, seeds: int) -> str:
    lines = []
    for code in CODES:
        if f"{code}_mean" in summary:
            values = ", ".join(f"{v:.1f}" for v in summary["last_epoch"][code].values())
            lines.append(f"last epoch, {CODES[code]}: {values} (mean {summary[f'{code}_mean']:.1f})")
    if "released_range" in summary:
        low, high = summary["released_range"]
        lines.append(f"released seed spread {low:.1f} .. {high:.1f} (width {high - low:.1f}); "
                     f"project seeds within it: {summary['project_seeds_within']} of {seeds}; "
                     f"project mean within it: {'yes' if summary['project_mean_within'] else 'no'}")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.released_worker is not None:
        run_released_worker(args)
        return
    import torch

    from msc_platform.run.tracking import git_state
    torch.set_num_threads(1)
    project_git = git_state()  # the code this run loads, before anyone changes the tree
    data_root = Path(args.data_root).resolve()
    collection = ensure_data(data_root, args.preset)
    print(f"data: {collection.dir} (synthetic preset {args.preset!r}, 768-d TVR layout)", flush=True)
    curves: dict[str, dict[int, list[float]]] = {}
    for seed in args.seeds:
        if args.only in ("released", "both"):
            curves.setdefault("released", {})[seed] = released_curve(args, seed)
        if args.only in ("project", "both"):
            curves.setdefault("project", {})[seed] = project_curve(args, seed)
    summary = last_epoch_summary(curves)
    print("\nvalidation SumR by epoch\n" + curve_table(curves, args.epochs))
    print(summary_text(summary, len(args.seeds)))
    if args.json:
        record = {"released_commit": RELEASED_COMMIT, "project_git": project_git,
                  "preset": args.preset, "hidden": args.hidden,
                  "heads": args.heads, "epochs": args.epochs, "seeds": args.seeds,
                  "curves": {code: {str(s): v for s, v in by_seed.items()}
                             for code, by_seed in curves.items()},
                  "summary": {k: v for k, v in summary.items() if k != "last_epoch"}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
