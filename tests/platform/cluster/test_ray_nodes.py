"""Starting a node with a bounded retry, and finding the recorded local cluster, on real processes.

The node commands here are small Python programs that behave like `ray start --block`: print the
started line and block, exit early, or hang; each starts a child process, and one that exits
early leaves it behind, to show that a failed attempt is stopped with everything it started.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from data_tools.processes import pid_alive
from msc_platform.cluster.local import (
    STATE_FILE,
    ClusterError,
    read_state,
    recorded_auth_mode,
    running_local_cluster,
    start_local_cluster,
    stop_cluster,
)
from msc_platform.cluster.process_groups import group_processes, stop_groups
from msc_platform.cluster.ray_nodes import STARTED_LINE, NodeSpec, NodeStartError, start_node

NODE_PROGRAM = textwrap.dedent("""
    import pathlib, signal, subprocess, sys, time
    counter = pathlib.Path(sys.argv[1])
    attempt = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempt))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    signal.signal(signal.SIGTERM, lambda *_: (child.kill(), sys.exit(0)))  # shut down in order
    pathlib.Path(sys.argv[1] + f".child{attempt}").write_text(str(child.pid))
    print(f"attempt {attempt}", flush=True)
    if attempt < int(sys.argv[2]):
        if sys.argv[3] == "exit":
            print("Exception: The current node timed out during startup.", flush=True)
            sys.exit(1)
        time.sleep(600)
    print(%r, flush=True)
    time.sleep(600)
""" % STARTED_LINE)


def node_command(tmp_path: Path, starts_at: int, failure: str) -> list[str]:
    """A fake `ray start --block` that starts on attempt `starts_at`; earlier ones exit or hang."""
    program = tmp_path / "node.py"
    program.write_text(NODE_PROGRAM)
    return [sys.executable, str(program), str(tmp_path / "attempts"), str(starts_at), failure]


def child_pids(tmp_path: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(tmp_path.glob("attempts.child*"))]


def test_a_node_that_exits_during_startup_is_started_again(tmp_path, capfd):
    groups: list[int] = []
    node = NodeSpec("worker1", "127.0.0.3", tmp_path / "worker1.log")
    start_node(node, lambda: node_command(tmp_path, 2, "exit"), {}, groups, attempts=3, timeout=30)
    try:
        assert len(groups) == 1 and pid_alive(groups[0])
        assert "worker1 node (127.0.0.3): `ray start` exited with status 1" in capfd.readouterr().err
        first_child, second_child = child_pids(tmp_path)
        assert not pid_alive(first_child) and pid_alive(second_child)
    finally:
        stop_groups(groups, grace=5)
    assert not group_processes(groups)


def test_a_node_that_never_starts_is_named_with_its_log_and_nothing_is_left(tmp_path):
    groups: list[int] = []
    node = NodeSpec("head", "127.0.0.2", tmp_path / "head.log")
    with pytest.raises(NodeStartError) as err:
        start_node(node, lambda: node_command(tmp_path, 99, "hang"), {}, groups, attempts=2,
                   timeout=2)
    message = str(err.value)
    assert message.startswith("the head node (127.0.0.2) did not start in 2 attempts: "
                              "not started within 2s")
    assert f"last lines of {node.log}:\nattempt 2" in message
    assert groups == []
    assert child_pids(tmp_path) and not any(pid_alive(p) for p in child_pids(tmp_path))


def _record(state_dir: Path, address: str, groups: list[int]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_FILE).write_text(json.dumps({
        "address": address, "temp_dir": str(state_dir / "tmp"), "auth": "token",
        "node_ips": ["127.0.0.2"], "process_groups": groups}))


def test_the_recorded_cluster_is_found_by_its_address_while_it_runs(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                               start_new_session=True)
    _record(tmp_path, "127.0.0.2:6379", [sleeper.pid])
    try:
        assert recorded_auth_mode("127.0.0.2:6379", tmp_path) == "token"
        assert recorded_auth_mode("127.0.0.2:6380", tmp_path) is None
        assert running_local_cluster("127.0.0.2:6379", tmp_path).node_ips == ["127.0.0.2"]
    finally:
        sleeper.kill()
        sleeper.wait()
    deadline = time.monotonic() + 10
    while pid_alive(sleeper.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert recorded_auth_mode("127.0.0.2:6379", tmp_path) is None
    assert recorded_auth_mode("127.0.0.2:6379", tmp_path / "nothing") is None


def test_an_unreadable_record_names_its_file(tmp_path):
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(RuntimeError, match=f"{tmp_path / STATE_FILE}: unreadable cluster state"):
        read_state(tmp_path)


def processes_working_in(folder: Path) -> list[int]:
    """Live processes whose working directory is `folder` (this test process excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if os.readlink(entry / "cwd") == str(folder) and pid_alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_a_real_head_that_does_not_start_in_time_is_named_and_stopped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # every Ray process started here works in tmp_path
    with pytest.raises(ClusterError) as err:
        # 1 s: `ray start` alone takes longer to import Ray, however quiet the machine
        started = start_local_cluster(tmp_path / "state", workers=1, auth="disabled", attempts=2,
                                      timeout=1)
        stop_cluster(started)  # reached only when the head started after all: leave nothing
    assert str(err.value).startswith("the head node (127.0.0.2) did not start in 2 attempts: "
                                     "not started within 1s")
    assert f"last lines of {tmp_path / 'state' / 'head.log'}:" in str(err.value)
    assert not (tmp_path / "state" / STATE_FILE).exists()
    assert not processes_working_in(tmp_path)
