"""Sweeps end to end on a local Ray the driver starts itself: interrupt the driver, resume, finish.

The driver is a real `msc sweep` process (so SIGINT reaches Ray Tune as it would from a shell);
MLflow is a SQLite store in tmp_path. The helpers here are shared with test_cluster.py.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml
from mlflow.tracking import MlflowClient

from data_tools.processes import pid_alive
from data_tools.synth import PRESETS
from msc_platform.cluster.process_groups import descendants
from msc_platform.run.runtime import ARENA_MAX_ENV

REPO_ROOT = Path(__file__).resolve().parents[3]
BASE_CONFIG = REPO_ROOT / "experiments" / "configs" / "synthetic.yaml"
TINY = PRESETS["tiny"]


def write_tiny_spec(path: Path, data_root: Path, name: str, epochs: int, body: dict) -> Path:
    """A sweep spec over the tiny synthetic set: hidden 32, CPU, `epochs` epochs, plus `body`."""
    spec = {"name": name, "base_config": str(BASE_CONFIG), "overrides": {
        "data.root": str(data_root), "data.synthetic_preset": None,
        "model.text_dim": TINY.text_dim, "model.video_dim": TINY.video_dim,
        "model.hidden": 32, "model.heads": 2, "model.hard_negative_start": 1,
        "train.batch_size": 8, "train.epochs": epochs, "train.patience": epochs,
        "train.device": "cpu", "train.progress": False, "train.lr": 2e-3,
        "train.eval_query_chunk": 16, "train.eval_video_batch": 16,
        "tracking.experiment": name, "tracking.log_checkpoint": False},
        "resources": {"cpu": 1, "gpu": 0}, **body}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def driver_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    """The driver's environment: this test's MLflow store, no inherited Ray address."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MSC_DATA_ROOT", ARENA_MAX_ENV)}
    env.update({"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def start_driver(spec: Path, workdir: Path, env: dict[str, str], *args: str,
                 log_name: str = "driver.log") -> subprocess.Popen:
    """Start `msc sweep SPEC --quiet --json outcome.json ARGS` in `workdir`, logging to `log_name`."""
    log = open(workdir / log_name, "ab")
    command = [sys.executable, "-m", "msc_platform.cli.main", "sweep", str(spec), "--quiet",
               "--storage", str(workdir / "ray"), "--json", str(workdir / "outcome.json"), *args]
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish_driver(proc: subprocess.Popen, workdir: Path, timeout: float,
                  log_name: str = "driver.log") -> tuple[int, str]:
    """Wait for the driver; returns (exit code, its log). Kills it on timeout and fails the test."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"sweep driver ran over {timeout}s:\n{(workdir / log_name).read_text()[-4000:]}")
    return code, (workdir / log_name).read_text()


def wait_until(condition: Callable[[], bool], timeout: float, proc: subprocess.Popen,
               workdir: Path) -> None:
    """Poll `condition` until true; fail when the driver exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"driver exited ({proc.returncode}) too early:\n"
                        f"{(workdir / 'driver.log').read_text()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.3)


def process_env(pid: int) -> dict[str, str]:
    """The environment process `pid` started with."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)


def result_rows(storage: Path) -> list[dict]:
    """Every per-epoch result Tune wrote for every trial under `storage`."""
    rows = []
    for path in storage.glob("*/*/result.json"):
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue  # a line being written right now
    return rows


def child_runs(client: MlflowClient, experiment: str) -> list:
    """Every run of `experiment` that is a trial (has a parent)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return [run for run in client.search_runs([found.experiment_id], max_results=1000)
            if "mlflow.parentRunId" in run.data.tags]


SPACE = {"model.sim_thr": {"uniform": [0.6, 0.95]}, "model.tcp": {"choice": [True, False]}}
# A tiny epoch takes about 0.25 s, and Tune writes a trial's result rows a moment after they
# happen. With 20 epochs a trial runs for about 5 s, so a signal sent once the first trial's last
# epoch is seen lands in the middle of the second trial (with 3 epochs, the second trial had
# already finished: the whole sweep was over before the signal).
MID_SWEEP_EPOCHS = 20
TWO_TRIALS = {"num_samples": 2, "max_concurrent_trials": 1, "seed": 7, "scheduler": {"type": "none"}}


def two_trial_spec(tmp_path: Path, data_root: Path, name: str, epochs: int, space: dict) -> Path:
    """Two trials one after another, no early stopping: after the first trial's last epoch the
    second one is surely still running when the driver is interrupted."""
    return write_tiny_spec(tmp_path / "spec.yaml", data_root, name, epochs=epochs,
                           body={**TWO_TRIALS, "space": space})


def resume_to_the_end(spec: Path, tmp_path: Path, env: dict[str, str], client: MlflowClient,
                      experiment: str) -> tuple[dict, list]:
    """Resume the sweep; check it ends with both trials TERMINATED, one run each, all FINISHED.
    Returns (the outcome, the child runs)."""
    code, log = finish_driver(start_driver(spec, tmp_path, env, "--resume"), tmp_path, 300)
    assert code == 0, log[-3000:]
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert not outcome["interrupted"]
    assert [t["status"] for t in outcome["trials"]] == ["TERMINATED"] * 2
    runs = child_runs(client, experiment)
    assert sorted(r.data.tags["msc.trial_id"] for r in runs) == sorted(
        t["trial_id"] for t in outcome["trials"])  # one run per trial, none duplicated
    assert [r.info.status for r in runs] == ["FINISHED"] * 2
    return outcome, runs


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_repeating_finished_trials(tmp_path, tiny_data_root):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    epochs = MID_SWEEP_EPOCHS
    spec = two_trial_spec(tmp_path, tiny_data_root, "resume", epochs, SPACE)
    client = MlflowClient(tracking_uri=uri)
    env = driver_env(uri)

    driver = start_driver(spec, tmp_path, env)
    last_epoch = lambda: [r for r in result_rows(tmp_path / "ray") if r.get("epoch") == epochs]
    wait_until(lambda: bool(last_epoch()), 240, driver, tmp_path)
    driver.send_signal(signal.SIGINT)
    code, log = finish_driver(driver, tmp_path, 120)
    assert code == 3, log[-3000:]
    interrupted = json.loads((tmp_path / "outcome.json").read_text())
    assert interrupted["interrupted"] is True
    first = client.get_run(last_epoch()[0]["mlflow_run_id"])
    assert first.info.status == "FINISHED"

    outcome, _ = resume_to_the_end(spec, tmp_path, env, client, "resume")
    again = client.get_run(first.info.run_id)
    assert again.info.end_time == first.info.end_time  # the finished trial did not run again
    steps = [m.step for m in client.get_metric_history(first.info.run_id, "loss/total")]
    assert steps == list(range(epochs))
    parent = client.get_run(outcome["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["msc.role"] == "sweep-parent"
    assert parent.data.metrics["trials/terminated"] == 2
    assert parent.data.metrics["best/SumR"] == max(t["best"] for t in outcome["trials"])


def process_names(pids: set[int]) -> set[str]:
    """The executable names of the live processes among `pids` (zombies excluded)."""
    names = set()
    for pid in pids:
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if pid_alive(pid):
            names.add(Path(argv0).name)
    return names


def live_after(pids: set[int], seconds: float) -> set[str]:
    """The names of the processes among `pids` still alive after waiting up to `seconds`."""
    deadline = time.monotonic() + seconds
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return process_names(pids)


@pytest.mark.slow
def test_killed_driver_leaves_no_ray_and_resume_finishes_the_sweep(tmp_path, tiny_data_root):
    """SIGKILL (no handler runs, unlike SIGINT): the driver's local Ray goes with it, and a
    resume closes the runs it left RUNNING and finishes every trial once, in its own run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    epochs = MID_SWEEP_EPOCHS
    spec = two_trial_spec(tmp_path, tiny_data_root, "killed", epochs, SPACE)
    client = MlflowClient(tracking_uri=uri)
    env = driver_env(uri)

    driver = start_driver(spec, tmp_path, env)
    last_epoch = lambda: [r for r in result_rows(tmp_path / "ray") if r.get("epoch") == epochs]
    wait_until(lambda: bool(last_epoch()), 240, driver, tmp_path)
    session = descendants([driver.pid])  # the local Ray that ray.init started in the driver
    assert {"gcs_server", "raylet"} <= process_names(session), process_names(session)
    driver.send_signal(signal.SIGKILL)
    assert driver.wait(timeout=30) == -signal.SIGKILL
    assert live_after(session, 15) == set(), "Ray processes outlived the killed driver"
    (parent_id,) = {r.data.tags["mlflow.parentRunId"] for r in child_runs(client, "killed")}
    assert client.get_run(parent_id).info.status == "RUNNING"  # nobody closed it

    outcome, runs = resume_to_the_end(spec, tmp_path, env, client, "killed")
    assert outcome["parent_run_id"] == parent_id
    for run in runs:
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "val/SumR")}
        assert steps == set(range(epochs)), (run.info.run_name, steps)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials/terminated"] == 2
    assert parent.data.metrics["best/SumR"] == max(t["best"] for t in outcome["trials"])


@pytest.mark.slow
def test_local_ray_dying_under_the_driver_ends_it_with_how_to_resume(tmp_path, tiny_data_root):
    """The driver's own raylet is SIGKILLed mid-trial (as `ray stop` or the OOM killer would):
    the driver says so in one line with how to resume, exits 3 at once, leaves no Ray process,
    and a resume finishes the sweep in the same runs."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = two_trial_spec(tmp_path, tiny_data_root, "lost", MID_SWEEP_EPOCHS,
                          {"model.sim_thr": {"uniform": [0.6, 0.95]}})
    env = driver_env(uri)
    driver = start_driver(spec, tmp_path, env)
    first_epoch = lambda: [r for r in result_rows(tmp_path / "ray") if r.get("epoch") == 1]
    wait_until(lambda: bool(first_epoch()), 240, driver, tmp_path)
    assert process_env(first_epoch()[0]["pid"]).get(ARENA_MAX_ENV) == "1"  # training_thread_env
    session = descendants([driver.pid])
    (raylet,) = [pid for pid in session if process_names({pid}) == {"raylet"}]
    os.kill(raylet, signal.SIGKILL)
    killed_at = time.monotonic()
    code, log = finish_driver(driver, tmp_path, 60)
    assert code == 3 and time.monotonic() - killed_at < 15, log[-3000:]
    (line,) = [x for x in log.splitlines() if x.startswith("error: the local Ray instance")]
    assert f"its raylet (pid {raylet}) exited" in line and "make sweep RESUME=1" in line
    assert live_after(session, 15) == set(), "Ray processes outlived the driver"

    resume_to_the_end(spec, tmp_path, env, MlflowClient(tracking_uri=uri), "lost")


@pytest.mark.slow
def test_search_sweep_with_asha_closes_every_trial_run(tmp_path, tiny_data_root):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = write_tiny_spec(tmp_path / "spec.yaml", tiny_data_root, "search", epochs=2, body={
        "num_samples": 3, "max_concurrent_trials": 2, "seed": 3,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "space": {"model.sim_thr": {"uniform": [0.6, 0.95]},
                  "model.cbva": {"choice": ["adaptive", "off"]}}})
    code, log = finish_driver(start_driver(spec, tmp_path, driver_env(uri)), tmp_path, 300)
    assert code == 0, log[-3000:]
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert [t["status"] for t in outcome["trials"]] == ["TERMINATED"] * 3
    for trial in outcome["trials"]:
        assert 0.6 <= trial["params"]["model.sim_thr"] <= 0.95
        assert trial["params"]["model.cbva"] in ("adaptive", "off")
    client = MlflowClient(tracking_uri=uri)
    runs = child_runs(client, "search")
    assert sorted(r.data.tags["msc.trial_id"] for r in runs) == sorted(
        t["trial_id"] for t in outcome["trials"])
    closed = [(r.info.status, "best/SumR" in r.data.metrics, r.data.tags.get("error")) for r in runs]
    assert all(status == "FINISHED" and has_best for status, has_best, _ in closed), closed
    for run in runs:  # the full record, logged by the driver from the trial's last checkpoint
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"metrics.json", "ranks.parquet"} <= artifacts, (run.info.run_id, artifacts)
        assert re.fullmatch(r"t\d\d sim_thr=[0-9.]+ cbva=(adaptive|off)", run.info.run_name)
        epochs = len(client.get_metric_history(run.info.run_id, "val/SumR"))
        assert ("stop_reason" in run.data.tags) == (epochs < 2), (epochs, run.data.tags)
    best = max(outcome["trials"], key=lambda t: t["best"])
    assert outcome["best_config"] == best["overrides"]
    assert outcome["best_metrics"]["best/SumR"] == best["best"]
    registered = client.get_model_version_by_alias("msc-synthetic", "best")
    assert outcome["registered_model"] == f"msc-synthetic/{registered.version}"
    assert registered.run_id == best["run_id"]  # the sweep's best trial, registered by the driver
    experiment = outcome["experiment_id"]
    assert f"/#/experiments/{experiment}/runs?workflowType=machine_learning" in log
    assert f"/#/experiments/{experiment}/runs/{outcome['parent_run_id']}?workflowType" in log
