"""Atomic writes: content goes to a hidden temporary file beside the target, then os.replace.

Readers see the old file or the new one, never a half-written one; a failed write removes its
temporary file and leaves the old target untouched. Every temporary file or directory of the
project is named by `temp_sibling`: `.{target name}.tmp-{pid}-{8 hex}`, so a leftover of a
killed writer can be recognised (`parse_temp_name`) and its writer checked
(`data_tools.processes.pid_alive`).

The writers take what to write as a callback on the temporary path (`atomic_write`), with
shorthands for bytes, text, JSON and file copies.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

TEMP_MARK = ".tmp-"
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}")


def temp_sibling(target: str | os.PathLike) -> Path:
    """A fresh hidden path in the folder of `target`: `.{name}.tmp-{pid}-{8 hex}`."""
    target = Path(target)
    return target.with_name(f".{target.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def parse_temp_name(name: str) -> tuple[str, int] | None:
    """(target name, writer pid) of a `temp_sibling` name; None for any other name."""
    match = _TEMP_NAME.fullmatch(name)
    if match is None:
        return None
    return match["target"], int(match["pid"])


def atomic_write(target: str | os.PathLike, write: Callable[[Path], Any], *,
                 durable: bool = False) -> Path:
    """Call `write(tmp)` on a `temp_sibling` of `target`, then move it onto `target`.

    Creates the target's folder. `durable` flushes the file to disk (fsync) before the move.
    Re-raises whatever `write` raises (KeyboardInterrupt included) after removing the temporary
    file; OSError when the folder is not writable. Returns the target path.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    try:
        write(tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(target: str | os.PathLike, data: bytes, *, durable: bool = False) -> Path:
    """Write `data` to `target` atomically; see atomic_write."""
    return atomic_write(target, lambda tmp: tmp.write_bytes(data), durable=durable)


def atomic_write_text(target: str | os.PathLike, text: str, *, durable: bool = False) -> Path:
    """Write `text` (UTF-8) to `target` atomically; see atomic_write."""
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"),
                        durable=durable)


def atomic_write_json(target: str | os.PathLike, payload: Any, *, indent: int = 2,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """Write `payload` as JSON to `target` atomically.

    Raises TypeError (before touching the disk) for a value JSON cannot hold and `default`
    does not convert.
    """
    return atomic_write_text(target, json.dumps(payload, indent=indent, default=default))


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy the file `source` to `target` atomically; raises OSError when `source` is unreadable."""
    return atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
