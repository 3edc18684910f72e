"""Finding and stopping the processes that a set of process groups started, and nothing else.

A command started with `start_new_session=True` leads a process group whose id is its pid. Some
of its descendants (Ray's worker processes) move to process groups of their own, so stopping a
group also walks the process tree in /proc (Linux) to reach them.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from data_tools.processes import pid_alive


def group_alive(pgid: int) -> bool:
    """True while any process of process group `pgid` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parent_pids() -> dict[int, int]:
    """{pid: parent pid} of every process visible in /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(roots: list[int]) -> set[int]:
    """The processes below `roots` in the process tree (roots excluded)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parent_pids().items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def group_processes(pgids: list[int]) -> set[int]:
    """The live processes of the groups led by `pgids`: the leaders and everything below them."""
    leaders = [pid for pid in pgids if group_alive(pid)]
    return {pid for pid in set(leaders) | descendants(leaders) if pid_alive(pid)}


def _kill_quietly(pid: int, sig: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_groups(pgids: list[int], grace: float = 20.0) -> None:
    """SIGTERM each group leader (last started first), then SIGKILL whatever is left after `grace` s.

    SIGTERM goes to the leader alone so that it can shut its children down in order; the
    SIGKILL reaches every process found below the leaders and every member of their groups.
    """
    leaders = [pid for pid in pgids if group_alive(pid)]
    processes = group_processes(leaders)
    for pid in reversed(leaders):
        _kill_quietly(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in processes):
        time.sleep(0.2)
    for pid in processes:
        _kill_quietly(pid, signal.SIGKILL)
    for pgid in leaders:
        _kill_quietly(pgid, signal.SIGKILL, group=True)
