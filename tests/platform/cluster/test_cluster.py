"""A sweep on a real two-node Ray cluster with a real `mlflow server`, and a real crash.

One cluster (head 127.0.0.2 + worker 127.0.0.3, token authentication, 1 CPU each) and one
MLflow server on loopback serve one grid sweep of two trials, started together (one per node):
a healthy row and one whose learning rate makes the loss NaN. While it runs, the test SIGKILLs
the worker process of row `good` after its first checkpoint. The tests then check what each part
of the issue promises.
"""
from __future__ import annotations

import json
import os
import signal
import urllib.parse
import urllib.request

import pytest

from data_tools.processes import pid_alive
from msc_platform.cluster.local import (
    cluster_nodes,
    cluster_processes,
    start_local_cluster,
    stop_cluster,
)
from msc_platform.run.runtime import ARENA_MAX_ENV
from tests.platform.sweeps.test_runner import (
    driver_env,
    finish_driver,
    process_env,
    result_rows,
    start_driver,
    wait_until,
    write_tiny_spec,
)

pytestmark = pytest.mark.slow
SWEEP = "cluster"
EPOCHS = 12  # a tiny epoch takes about 0.25 s: the kill after epoch 1 lands mid-run
MAX_FAILURES = 1


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head and one worker node; stopped at the end, with a check that no process is left."""
    state = tmp_path_factory.mktemp("cluster")
    cluster = start_local_cluster(state, workers=1, cpus=1, auth="token")
    processes = cluster_processes(cluster)
    try:
        yield cluster
    finally:
        processes |= cluster_processes(cluster)
        stop_cluster(cluster)
        left = [pid for pid in processes if pid_alive(pid)]
        assert not left, f"cluster processes still alive after stop: {left}"


def rest(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """Call the MLflow REST API (GET with query, or POST with a JSON body)."""
    address = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        address += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(address, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def cluster_sweep(ray_cluster, mlflow_server, tiny_data_root, tmp_path_factory):
    """Run the grid sweep on the cluster, killing row `good`'s worker after its first epoch."""
    workdir = tmp_path_factory.mktemp("cluster_sweep")
    spec = write_tiny_spec(workdir / "spec.yaml", tiny_data_root, SWEEP, EPOCHS, body={
        "max_concurrent_trials": 2, "max_failures": MAX_FAILURES,
        "rows": {"good": {}, "nan": {"train.lr": 1e30}},
        "seeds": [0]})
    env = driver_env(mlflow_server, RAY_ADDRESS=ray_cluster.address, RAY_AUTH_MODE="token")
    driver = start_driver(spec, workdir, env)
    first_good = lambda: [r for r in result_rows(workdir / "ray")
                          if r["config"]["row"] == "good" and r["epoch"] == 1]
    wait_until(lambda: bool(first_good()), 300, driver, workdir)
    killed = first_good()[0]["pid"]
    worker_env = process_env(killed)
    os.kill(killed, signal.SIGKILL)
    code, log = finish_driver(driver, workdir, 400)
    return {"code": code, "log": log, "killed_pid": killed, "worker_env": worker_env,
            "rows": result_rows(workdir / "ray"),
            "outcome": json.loads((workdir / "outcome.json").read_text()),
            "nodes": cluster_nodes(ray_cluster)}


def trial_of(outcome: dict, row: str) -> dict:
    (trial,) = [t for t in outcome["trials"] if t["params"]["row"] == row]
    return trial


def test_sweep_ends_normally(cluster_sweep):
    assert cluster_sweep["code"] == 0, cluster_sweep["log"][-4000:]
    assert not cluster_sweep["outcome"]["interrupted"]


def test_trial_workers_start_with_one_malloc_arena(cluster_sweep):
    """training_thread_env reaches a cluster's workers through the runtime environment."""
    assert cluster_sweep["worker_env"].get(ARENA_MAX_ENV) == "1"


def test_trials_ran_on_both_nodes(cluster_sweep, mlflow_server):
    runs = child_run_tags(mlflow_server, cluster_sweep["outcome"]["parent_run_id"])
    nodes = cluster_sweep["nodes"]
    assert all(nodes[t["msc.node_ip"]] == t["msc.node_id"] for t in runs.values())
    rows = cluster_sweep["rows"]
    assert {r["node_id"] for r in rows} | {t["msc.node_id"] for t in runs.values()} == set(
        nodes.values())
    (good,) = [t for t in runs.values() if t["msc.row"] == "good"]
    last_good = [r for r in rows if r["config"]["row"] == "good"][-1]
    assert good["msc.node_id"] == last_good["node_id"]  # a retry elsewhere updates the tags


def test_crashed_trial_resumed_from_its_checkpoint(cluster_sweep):
    good = trial_of(cluster_sweep["outcome"], "good")
    assert good["status"] == "TERMINATED" and good["failures"] == 1
    rows = [r for r in cluster_sweep["rows"] if r["config"]["row"] == "good"]  # in report order
    starts = [i for i, r in enumerate(rows) if r["iterations_since_restore"] == 1]
    assert len(starts) == 2 and starts[0] == 0
    restart = starts[1]
    assert rows[restart]["epoch"] == rows[restart - 1]["epoch"] + 1  # from the last checkpoint
    assert rows[-1]["epoch"] == EPOCHS
    assert all(r["pid"] != cluster_sweep["killed_pid"] for r in rows[restart:])


def test_nan_trial_fails_boundedly_while_the_others_finish(cluster_sweep):
    outcome = cluster_sweep["outcome"]
    nan = trial_of(outcome, "nan")
    assert nan["status"] == "ERROR" and "NonFiniteLossError" in nan["error"]
    assert nan["failures"] == MAX_FAILURES + 1
    assert trial_of(outcome, "good")["status"] == "TERMINATED"


def child_run_tags(url: str, parent: str) -> dict[str, dict[str, str]]:
    """{run id: tags} of the parent's child runs, read through the server's REST API."""
    experiment = rest(url, "experiments/get-by-name", experiment_name=SWEEP)["experiment"]
    runs = rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                     "max_results": 100})["runs"]
    tags = {run["info"]["run_id"]: {t["key"]: t["value"] for t in run["data"].get("tags", [])}
            for run in runs}
    return {rid: t for rid, t in tags.items() if t.get("mlflow.parentRunId") == parent}


def run_status(url: str, run_id: str) -> str:
    return rest(url, "runs/get", run_id=run_id)["run"]["info"]["status"]


def test_mlflow_server_serves_parent_and_child_runs(cluster_sweep, mlflow_server):
    outcome = cluster_sweep["outcome"]
    parent = outcome["parent_run_id"]
    parent_run = rest(mlflow_server, "runs/get", run_id=parent)["run"]
    parent_tags = {t["key"]: t["value"] for t in parent_run["data"]["tags"]}
    assert parent_tags["msc.role"] == "sweep-parent" and parent_run["info"]["status"] == "FINISHED"
    children = child_run_tags(mlflow_server, parent)
    assert sorted(t["msc.row"] for t in children.values()) == ["good", "nan"]  # no duplicates
    assert all(t["msc.ablation"] == SWEEP and t["msc.seed"] == "0" for t in children.values())
    for run_id, t in children.items():
        if t["msc.row"] == "nan":
            assert run_status(mlflow_server, run_id) == "FAILED"
            assert t["error"].startswith("NonFiniteLossError")
            continue
        assert run_status(mlflow_server, run_id) == "FINISHED"
        history = rest(mlflow_server, "metrics/get-history", run_id=run_id, metric_key="val/SumR")
        assert sorted({m["step"] for m in history["metrics"]}) == list(range(EPOCHS))
        best = rest(mlflow_server, "metrics/get-history", run_id=run_id, metric_key="best/SumR")
        assert len(best["metrics"]) == 1
    parent_best = rest(mlflow_server, "metrics/get-history", run_id=parent, metric_key="best/SumR")
    assert parent_best["metrics"][0]["value"] == trial_of(outcome, "good")["best"]
