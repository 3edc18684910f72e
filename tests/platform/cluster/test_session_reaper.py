"""The reaper of a driver's local Ray, with real processes standing in for the driver and Ray.

A stand-in driver starts a "Ray" child whose command line names a session folder (it starts a
grandchild of its own, as the raylet starts workers), an unrelated child, and the reaper. Killed
with SIGKILL, the driver leaves the session's processes to the reaper, which stops them and
nothing else; a driver that says `done` first has nothing stopped. (The real case, a sweep
driver killed mid-sweep, is tests/platform/sweeps/test_runner.py's slow test.)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from data_tools.processes import pid_alive
from msc_platform.cluster.process_groups import descendants
from msc_platform.cluster.session_reaper import POLL_S, session_processes

DRIVER = """
import subprocess, sys, time
from msc_platform.cluster.session_reaper import start_reaper, stop_reaper
session, ending = sys.argv[1], sys.argv[2]
quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
ray = subprocess.Popen([sys.executable, "-c", "import subprocess, time; "
                        "subprocess.Popen(['sleep', '600']); time.sleep(600)", session], **quiet)
other = subprocess.Popen(["sleep", "600"], **quiet)
reaper = start_reaper(session)
print(ray.pid, other.pid, reaper.pid, flush=True)
time.sleep(3)
if ending == "done":
    stop_reaper(reaper)
    print("stopped", flush=True)
time.sleep(600)
"""


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def stand_in(tmp_path):
    """Start the stand-in driver with an ending ('kill' or 'done'); yields a dict of its pids.

    Every process it started is killed at the end, whatever the test did."""
    started: list[subprocess.Popen] = []
    pids: set[int] = set()

    def start(ending: str) -> dict:
        session = str(tmp_path / "session_2026-01-01_00-00-00_000000_1")
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, session, ending],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(driver)
        ray, other, reaper = map(int, driver.stdout.readline().split())
        assert wait_for(lambda: len(descendants([ray])) == 1, 10)
        (worker,) = descendants([ray])
        pids.update({ray, other, reaper, worker})
        return {"driver": driver, "ray": ray, "worker": worker, "other": other,
                "reaper": reaper, "session": session}

    yield start
    for driver in started:
        driver.kill()
        driver.wait()
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_session_processes_are_the_children_naming_the_session_and_below(stand_in):
    procs = stand_in("done")
    noted = session_processes(procs["driver"].pid, procs["session"])
    assert set(noted) == {procs["ray"], procs["worker"]}  # not `other`, not the reaper


def test_a_killed_driver_leaves_nothing_of_its_session(stand_in):
    procs = stand_in("kill")
    time.sleep(POLL_S * 2)  # the reaper has noted the session
    procs["driver"].kill()
    procs["driver"].wait()
    assert wait_for(lambda: not any(pid_alive(procs[k]) for k in ("ray", "worker", "reaper")), 5)
    assert pid_alive(procs["other"])  # not the session's: left alone
    assert "stopped the 2 processes left of it" in procs["driver"].stderr.read()


def test_a_driver_that_said_done_has_nothing_stopped(stand_in):
    procs = stand_in("done")
    assert procs["driver"].stdout.readline().strip() == "stopped"
    assert wait_for(lambda: not pid_alive(procs["reaper"]), 5)
    procs["driver"].kill()
    procs["driver"].wait()
    time.sleep(POLL_S * 2)
    assert pid_alive(procs["ray"]) and pid_alive(procs["worker"])
