"""The watchdog of a driver's local Ray: a raylet that dies under the driver ends it with exit 3.

A stand-in driver runs `watch_local_ray` over a stand-in raylet (a real process named `raylet`
whose command line names the session folder, as Ray's does). The real case, a sweep driver whose
raylet is SIGKILLed mid-trial, is the slow test in test_runner.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from data_tools.processes import pid_alive

DRIVER = """
import os, subprocess, sys, threading, time
from msc_platform.sweeps.ray_session import watch_local_ray
session, raylet_program = sys.argv[1:3]
raylet = subprocess.Popen([raylet_program, "-c", "import time; time.sleep(600)", session])
stopping = threading.Event()
watch_local_ray(session, stopping, interval=0.2)
print(raylet.pid, flush=True)
if sys.stdin.readline().strip() == "stop":
    stopping.set()
    print("stopping", flush=True)
time.sleep(600)
"""


@pytest.fixture
def stand_in(tmp_path):
    """The stand-in driver and its raylet's pid; both killed at the end."""
    raylet_program = tmp_path / "raylet"
    raylet_program.symlink_to(sys.executable)
    session = str(tmp_path / "session_2026-01-01_00-00-00_000000_1")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, session, str(raylet_program)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    raylet = int(driver.stdout.readline())
    yield driver, raylet, session
    driver.kill()
    driver.wait()
    if pid_alive(raylet):
        os.kill(raylet, signal.SIGKILL)


def test_a_dead_raylet_ends_the_driver_with_exit_3_and_how_to_resume(stand_in):
    driver, raylet, session = stand_in
    os.kill(raylet, signal.SIGKILL)
    assert driver.wait(timeout=10) == 3
    assert driver.stderr.read().strip().splitlines() == [
        f"error: the local Ray instance of this sweep died under it: its raylet (pid {raylet}) "
        f"exited (`ray stop`, the OOM killer or a crash; Ray's logs: {session}/logs). The trials "
        "keep what they checkpointed: continue the sweep with `make sweep RESUME=1` (or "
        "--resume; `make ablation RESUME=1` for a grid)"]


def test_a_raylet_stopped_by_the_shutdown_is_no_loss(stand_in):
    driver, raylet, _ = stand_in
    driver.stdin.write("stop\n")
    driver.stdin.flush()
    assert driver.stdout.readline().strip() == "stopping"
    os.kill(raylet, signal.SIGKILL)
    time.sleep(1.0)  # five watch intervals
    assert driver.poll() is None
