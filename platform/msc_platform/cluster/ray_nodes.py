"""Starting one Ray node (`ray start --block`) as a process group, with a bounded retry.

A node has started when its `ray start` prints "Ray runtime started." to its log: by then its
raylet has registered with the head's GCS. `ray start` itself gives the raylet 30 s to register
and then exits ("The current node timed out during startup"), which happens on a loaded machine
without anything being wrong; such an attempt is stopped and the node started again, up to
`attempts` times. A node that never starts raises NodeStartError naming the node and quoting the
last lines of its log.
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from msc_platform.cluster.process_groups import stop_groups

STARTED_LINE = "Ray runtime started."
TAIL_LINES = 20
FAILED_ATTEMPT_GRACE_S = 5.0


class NodeStartError(RuntimeError):
    """A Ray node did not start within its attempts."""


@dataclass
class NodeSpec:
    """One node to start: its name in messages (head, worker1, ...), its IP and its log file."""

    name: str
    ip: str
    log: Path


def _read_after(log: Path, offset: int) -> str:
    """What `log` holds after byte `offset` ('' when it cannot be read)."""
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def log_tail(log: Path, offset: int = 0, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of `log` written after byte `offset`."""
    return "\n".join(_read_after(log, offset).rstrip().splitlines()[-lines:])


def _log_size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start `args` in a new session (its pid is its process group id), output appended to `log`."""
    with open(log, "ab") as handle:
        return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _wait_started(proc: subprocess.Popen, log: Path, offset: int, timeout: float) -> str | None:
    """None once the node has started; else why not (its process exited, or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if STARTED_LINE in _read_after(log, offset):
            return None
        if proc.poll() is not None:
            last = log_tail(log, offset, lines=1) or "no output"
            return f"`ray start` exited with status {proc.returncode} ({last.strip()})"
        time.sleep(0.5)
    return f"not started within {timeout:.0f}s"


def _stop_attempt(proc: subprocess.Popen) -> None:
    stop_groups([proc.pid], grace=FAILED_ATTEMPT_GRACE_S)
    proc.wait()


def start_node(node: NodeSpec, make_args: Callable[[], list[str]], env: dict[str, str],
               groups: list[int], *, attempts: int = 3, timeout: float = 120.0) -> None:
    """Start `node` with the command `make_args()` builds (fresh per attempt); wait until it runs.

    The process group id of the running attempt is appended to `groups` (also while waiting, so
    that a caller interrupted meanwhile can stop it). A failed attempt is stopped and retried,
    with a note on stderr. Raises NodeStartError after `attempts` failed attempts.
    """
    why, offset = "", 0
    for attempt in range(1, attempts + 1):
        offset = _log_size(node.log)
        proc = _spawn(make_args(), node.log, env)
        groups.append(proc.pid)
        why = _wait_started(proc, node.log, offset, timeout)
        if why is None:
            return
        _stop_attempt(proc)
        groups.remove(proc.pid)
        if attempt < attempts:
            print(f"note: {node.name} node ({node.ip}): {why}; starting it again "
                  f"(attempt {attempt + 1} of {attempts})", file=sys.stderr)
    raise NodeStartError(f"the {node.name} node ({node.ip}) did not start in {attempts} attempts: "
                         f"{why}\nlast lines of {node.log}:\n{log_tail(node.log, offset)}")
