"""Whether a process id belongs to a running process (the one pid check of the project)."""
from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie (exited, not yet reaped).

    Reads /proc/{pid}/stat on Linux; elsewhere asks with signal 0, which cannot tell zombies.
    """
    if pid <= 0:
        return False
    if PROC.is_dir():
        try:
            stat = (PROC / str(pid) / "stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
