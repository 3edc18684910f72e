"""Stopping what a killed driver's local Ray leaves behind, within seconds.

`ray.init()` without an address starts a Ray instance as children of the driver (GCS, raylet,
log monitor, ...) and ties them to it: on Linux they get SIGKILL when the driver dies. The
raylet's own children outlive it, though: its dashboard agent and runtime-env agent notice the
raylet's death at once, then try to tell the GCS, which died too, and wait out a 60 s timeout
before they exit (ray 2.60, `ray/_private/process_watcher.py`: `report_raylet_error_logs`).
After a driver killed with SIGKILL (by a user, or the OOM killer) they would linger a minute.

The reaper is a small process the driver starts beside its Ray instance
(`start_reaper(session_dir)`, stopped with `stop_reaper` before a normal shutdown). While the
driver lives it notes, every `POLL_S` seconds, the processes of that instance: the driver's
children whose command line names the session folder, and everything below them. When the
driver's end of the pipe closes without the word `done` (the driver died), it SIGKILLs every
noted process that still runs (same pid, same start time: never a recycled pid) and exits.
It runs in a session of its own, so a Ctrl-C meant for the driver does not reach it.

    python -m msc_platform.cluster.session_reaper DRIVER_PID SESSION_DIR   (stdin: the pipe)
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from msc_platform.cluster.process_groups import _parent_pids, descendants

MODULE = "msc_platform.cluster.session_reaper"  # what `python -m` runs (its __name__ is __main__)
POLL_S = 1.0
DONE = b"done"
STOP_TIMEOUT_S = 10.0


def _start_time(pid: int) -> str | None:
    """The start time of `pid` (field 22 of /proc/pid/stat), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _of_session(pid: int, session_dir: str) -> bool:
    """Whether the command line of `pid` names `session_dir` and is not a reaper's."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return session_dir.encode() in command and MODULE.encode() not in command


def _executable(pid: int) -> str:
    try:
        return Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()).name
    except (OSError, UnicodeDecodeError):
        return ""


def session_children(driver_pid: int, session_dir: str) -> dict[int, str]:
    """{pid: executable name} of the processes `ray.init` started in the driver (gcs_server,
    raylet, ...): its children whose command line names `session_dir` (the reaper, whose
    arguments name it too, excepted)."""
    return {pid: _executable(pid) for pid, parent in _parent_pids().items()
            if parent == driver_pid and _of_session(pid, session_dir)}


def session_processes(driver_pid: int, session_dir: str) -> dict[int, str]:
    """{pid: start time} of the Ray instance the driver started: `session_children` and
    everything below them."""
    roots = list(session_children(driver_pid, session_dir))
    found = {pid: _start_time(pid) for pid in set(roots) | descendants(roots)}
    return {pid: started for pid, started in found.items() if started is not None}


def kill_noted(noted: dict[int, str]) -> list[int]:
    """SIGKILL each noted process that still runs with its noted start time; returns their pids."""
    killed = []
    for pid, started in noted.items():
        if _start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
            killed.append(pid)
    return killed


def watch(driver_pid: int, session_dir: str, pipe: int, poll_s: float = POLL_S) -> list[int]:
    """Note the session's processes until the pipe closes; returns the pids killed (none when
    the driver said `done` first)."""
    noted: dict[int, str] = {}
    said = b""
    while True:
        noted.update(session_processes(driver_pid, session_dir))
        readable, _, _ = select.select([pipe], [], [], poll_s)
        if not readable:
            continue
        chunk = os.read(pipe, 64)
        if chunk:
            said += chunk
            continue
        return [] if DONE in said else kill_noted(noted)


def start_reaper(session_dir: str) -> subprocess.Popen:
    """Start the reaper of this process's local Ray instance (its session folder `session_dir`)."""
    return subprocess.Popen([sys.executable, "-m", MODULE, str(os.getpid()), session_dir],
                            stdin=subprocess.PIPE, start_new_session=True)


def stop_reaper(reaper: subprocess.Popen) -> None:
    """Tell the reaper the instance shut down normally and wait for it to exit."""
    try:
        reaper.stdin.write(DONE)
        reaper.stdin.close()
    except OSError:
        pass  # it is gone already
    try:
        reaper.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


def main(argv: list[str] | None = None) -> int:
    """`python -m msc_platform.cluster.session_reaper DRIVER_PID SESSION_DIR`; returns 0."""
    driver_pid, session_dir = (argv or sys.argv[1:])[:2]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    killed = watch(int(driver_pid), session_dir, sys.stdin.fileno())
    if killed:
        print(f"msc: the sweep driver (pid {driver_pid}) ended without shutting its local Ray "
              f"down; stopped the {len(killed)} processes left of it ({session_dir})",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
