"""pid_alive: running processes are alive; exited ones (zombies included) and bad ids are not."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from data_tools.processes import pid_alive


def test_this_process_is_alive_and_bad_ids_are_not():
    assert pid_alive(os.getpid())
    assert not pid_alive(0) and not pid_alive(-1)
    assert not pid_alive(2**22 + 12345)  # above Linux's pid_max


def test_an_exited_child_is_dead_before_and_after_it_is_reaped():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(child.pid)
        child.kill()
        deadline = time.monotonic() + 10
        while pid_alive(child.pid) and time.monotonic() < deadline:  # a zombie until reaped
            time.sleep(0.05)
        assert not pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)
