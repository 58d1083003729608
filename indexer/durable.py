"""Durable file writes that load nothing heavy (indexer/bundle.py loads FAISS and numpy; a judgment write must not):
a file that appears whole or not at all, and the directory fsync that makes a new name survive a crash."""
from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(target: Path, data: bytes) -> None:
    """Writes `data` to a temporary file beside `target`, fsyncs it, renames it into place and fsyncs the folder."""
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    fsync_dir(target.parent)
