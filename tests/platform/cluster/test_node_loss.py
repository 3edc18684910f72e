"""A sweep that loses a node: the worker node's raylet is SIGKILLed while a trial runs there.

One cluster of its own (head 127.0.0.2 + worker 127.0.0.3, token authentication, 1 CPU each,
so the head takes trials too) runs one grid sweep of two trials at once, one per node, MLflow in
a SQLite file both nodes share (they are on this machine). After the worker's trial has
checkpointed its first epoch, the test kills that node's raylet by pid; `ray start --block`
then takes the rest of the node down. Tune counts the lost trial's actor as a failure and
retries it from its last checkpoint on the head, once the head's own trial is done. The tests
check what the sweep promises: every trial done once, in one run each, the parent's best right.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from data_tools.processes import pid_alive
from msc_platform.cluster.local import (
    HEAD_IP,
    cluster_nodes,
    cluster_processes,
    start_local_cluster,
    stop_cluster,
)
from tests.platform.sweeps.test_runner import (
    child_runs,
    driver_env,
    finish_driver,
    result_rows,
    start_driver,
    wait_until,
    write_tiny_spec,
)

pytestmark = pytest.mark.slow
SWEEP = "node-loss"
WORKER_IP = "127.0.0.3"
EPOCHS = 12  # a tiny epoch takes about 0.25 s: the kill after epoch 1 lands mid-trial
MAX_FAILURES = 2


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/pid/stat (None when gone): tells a process from a later one that
    reuses its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


class SeenProcesses:
    """Every process of the cluster seen while the tests ran, by pid and start time."""

    def __init__(self) -> None:
        self.seen: dict[int, str] = {}

    def note(self, pids: set[int]) -> None:
        self.seen.update({pid: started for pid in pids if (started := start_time(pid))})

    def alive(self) -> list[int]:
        return [pid for pid, started in self.seen.items()
                if start_time(pid) == started and pid_alive(pid)]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head and one worker node; everything stopped at the end, checked by pid."""
    state = tmp_path_factory.mktemp("cluster")
    cluster = start_local_cluster(state, workers=1, cpus=1, auth="token")
    seen = SeenProcesses()
    seen.note(cluster_processes(cluster))
    try:
        yield cluster, seen
    finally:
        seen.note(cluster_processes(cluster))
        stop_cluster(cluster)
        deadline = time.monotonic() + 15
        while seen.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = seen.alive()
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"cluster processes still alive 15 s after stop: {left}"


def raylet_of(cluster, node_ip: str) -> int:
    """The pid of the raylet of node `node_ip` among the cluster's processes."""
    found = []
    for pid in cluster_processes(cluster):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(argv[0].decode()).name == "raylet" and f"--node_ip_address={node_ip}".encode() in argv:
            found.append(pid)
    assert len(found) == 1, f"raylets of {node_ip}: {found}"
    return found[0]


@pytest.fixture(scope="module")
def node_loss(ray_cluster, tiny_data_root, tmp_path_factory):
    """Run the sweep, killing the worker node's raylet after its trial's first epoch."""
    cluster, seen = ray_cluster
    nodes = cluster_nodes(cluster)
    workdir = tmp_path_factory.mktemp("node_loss")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    spec = write_tiny_spec(workdir / "spec.yaml", tiny_data_root, SWEEP, EPOCHS, body={
        "max_concurrent_trials": 2, "max_failures": MAX_FAILURES,
        "rows": {"a": {}, "b": {"train.lr": 3e-3}}, "seeds": [0]})
    env = driver_env(uri, RAY_ADDRESS=cluster.address, RAY_AUTH_MODE="token")
    driver = start_driver(spec, workdir, env)
    on_worker = lambda: [r for r in result_rows(workdir / "ray")
                         if r["node_id"] == nodes[WORKER_IP] and r["epoch"] == 1]
    wait_until(lambda: bool(on_worker()), 300, driver, workdir)
    seen.note(cluster_processes(cluster))
    raylet = raylet_of(cluster, WORKER_IP)
    os.kill(raylet, signal.SIGKILL)
    code, log = finish_driver(driver, workdir, 600)
    return {"code": code, "log": log, "nodes": nodes, "lost_trial": on_worker()[0]["trial_id"],
            "rows": result_rows(workdir / "ray"), "uri": uri,
            "outcome": json.loads((workdir / "outcome.json").read_text()),
            "alive_after": nodes_once_settled(cluster, gone=WORKER_IP)}


def nodes_once_settled(cluster, gone: str, timeout: float = 90) -> dict[str, str]:
    """The alive nodes once the head has noticed that node `gone` died (its health checks take
    a while to give up on a node, longer on a loaded machine), or as they are at `timeout`."""
    deadline = time.monotonic() + timeout
    alive = cluster_nodes(cluster)
    while gone in alive and time.monotonic() < deadline:
        time.sleep(2)
        alive = cluster_nodes(cluster)
    return alive


def trial(outcome: dict, trial_id: str) -> dict:
    (found,) = [t for t in outcome["trials"] if t["trial_id"] == trial_id]
    return found


def test_the_sweep_finishes_without_the_worker_node(node_loss):
    assert node_loss["code"] == 0, node_loss["log"][-4000:]
    assert not node_loss["outcome"]["interrupted"]
    assert node_loss["alive_after"] == {HEAD_IP: node_loss["nodes"][HEAD_IP]}  # the node is gone
    assert [t["status"] for t in node_loss["outcome"]["trials"]] == ["TERMINATED"] * 2


def test_the_lost_trial_resumed_on_the_head_from_its_last_checkpoint(node_loss):
    head, worker = node_loss["nodes"][HEAD_IP], node_loss["nodes"][WORKER_IP]
    lost = trial(node_loss["outcome"], node_loss["lost_trial"])
    assert 1 <= lost["failures"] <= MAX_FAILURES
    rows = [r for r in node_loss["rows"] if r["trial_id"] == lost["trial_id"]]  # report order
    starts = [i for i, r in enumerate(rows) if r["iterations_since_restore"] == 1]
    assert starts[0] == 0 and len(starts) >= 2
    restart = starts[-1]
    assert {r["node_id"] for r in rows[:starts[1]]} == {worker}
    assert {r["node_id"] for r in rows[restart:]} == {head}
    # from a checkpoint, not from scratch: the epoch after the last one saved (a report in
    # flight when the node died can have saved one checkpoint more than result.json shows)
    assert 1 < rows[restart]["epoch"] <= rows[restart - 1]["epoch"] + 2
    assert rows[-1]["epoch"] == EPOCHS
    other = [r for r in node_loss["rows"] if r["trial_id"] != lost["trial_id"]]
    assert {r["node_id"] for r in other} == {head}
    # the other trial may be retried too (a loaded head), but within max_failures, on the head
    assert trial(node_loss["outcome"], other[0]["trial_id"])["failures"] <= MAX_FAILURES


def test_every_trial_has_one_run_and_it_is_finished(node_loss):
    client = MlflowClient(tracking_uri=node_loss["uri"])
    runs = child_runs(client, SWEEP)
    by_trial = {r.data.tags["msc.trial_id"]: r for r in runs}
    assert len(runs) == len(by_trial) == 2  # none duplicated
    assert sorted(by_trial) == sorted(t["trial_id"] for t in node_loss["outcome"]["trials"])
    assert [r.info.status for r in runs] == ["FINISHED"] * 2  # none left RUNNING
    lost = by_trial[node_loss["lost_trial"]]
    assert int(lost.data.tags["msc.retries"]) >= 1
    assert lost.data.tags["msc.node_id"] == node_loss["nodes"][HEAD_IP]  # its last attempt's node
    for run in runs:
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "val/SumR")}
        assert steps == set(range(EPOCHS)), (run.info.run_name, steps)


def test_the_parent_run_has_the_best_trial(node_loss):
    outcome = node_loss["outcome"]
    parent = MlflowClient(tracking_uri=node_loss["uri"]).get_run(outcome["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials/terminated"] == 2
    assert parent.data.metrics["best/SumR"] == max(t["best"] for t in outcome["trials"])
    assert outcome["best_metrics"]["best/SumR"] == parent.data.metrics["best/SumR"]
