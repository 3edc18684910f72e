"""A cheap fingerprint of a collection's source files.

Fingerprint = SHA-256 over, for each of the four source files: its name, size and mtime (ns);
the full content of the two caption files (small); the first and last 1 MiB of the two HDF5 files
(catches a rewrite that keeps size and mtime). Reading it costs milliseconds even for real data.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from data_tools.layout import Collection

EDGE_BYTES = 1 << 20


def _edges_digest(path: Path) -> str:
    """SHA-256 of the first and last EDGE_BYTES of a file."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as handle:
        digest.update(handle.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            handle.seek(max(size - EDGE_BYTES, EDGE_BYTES))
            digest.update(handle.read(EDGE_BYTES))
    return digest.hexdigest()


def _file_record(collection: Collection, path: Path, full_content: bool) -> dict:
    stat = path.stat()
    content = hashlib.sha256(path.read_bytes()).hexdigest() if full_content else _edges_digest(path)
    return {"file": collection.relative(path), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "content": content}


def source_records(collection: Collection) -> list[dict]:
    """Name, size, mtime and content digest of each source file; raises OSError if one is missing."""
    captions = [collection.caption_file(s) for s in ("train", "val")]
    return ([_file_record(collection, p, True) for p in captions]
            + [_file_record(collection, p, False) for p in (collection.video_h5, collection.text_h5)])


def digest(payload) -> str:
    """SHA-256 hex of a JSON-serialisable payload (keys sorted)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def source_fingerprint(collection: Collection) -> str:
    """The fingerprint of the collection's source files; raises OSError if one is missing."""
    return digest(source_records(collection))
