"""The live index's write-ahead log (`<bundle>/wal.log`): the only thing a write waits on before it is acknowledged.

    record  := magic "VW" | length u32 LE | crc32(payload) u32 LE | payload (length bytes, UTF-8 JSON)
    payload := {"seq": n, "op": "upsert", "items": [...], "vectors": [{source: base64 float32}, ...]}
             | {"seq": n, "op": "upsert", "items": [...], "keep_vectors": true}      (a patch)
             | {"seq": n, "op": "delete", "ids": [...]}

An upsert's vectors are one object per item, keyed by source; an item's photo j > 0 is keyed "clip_image/j"
(indexer/multiphoto.py), so records from before several photos per item replay unchanged.

Replay reads records until the first short or CRC-failing one; that torn tail was never acked (its fsync did not
return) and is truncated away. Records carry their vectors, so replaying one needs no model and no photo.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("vitrine.live")

WAL_NAME = "wal.log"
_MAGIC = b"VW"
_HEADER = struct.Struct("<2sII")  # magic, payload length, crc32
MAX_RECORD_BYTES = 64 * 1024 * 1024


def pack_vector(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode("ascii")


def unpack_vector(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4").astype(np.float32)


class Wal:
    """An append-only log of length+CRC framed JSON records; see the module docstring for the format."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f = open(self.path, "ab+", buffering=0)
        self.broken = False
        self.records = 0          # records since the last truncation
        self.oldest_t: float | None = None  # wall time of the oldest record not yet checkpointed

    def replay(self) -> list[dict[str, Any]]:
        """Returns every intact record in order and truncates a torn or corrupt tail."""
        self._f.seek(0)
        data = self._f.read()
        out, pos = [], 0
        while pos + _HEADER.size <= len(data):
            magic, length, crc = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if magic != _MAGIC or length > MAX_RECORD_BYTES or end > len(data):
                break
            payload = data[pos + _HEADER.size:end]
            if zlib.crc32(payload) != crc:
                break
            out.append(json.loads(payload))
            pos = end
        if pos < len(data):
            log.warning("WAL %s: dropping %d bytes of torn or corrupt tail after %d records", self.path, len(data) - pos, len(out))
            self._f.truncate(pos)
            os.fsync(self._f.fileno())
        self._f.seek(0, os.SEEK_END)
        self.records = len(out)
        self.oldest_t = time.time() if out else None
        return out

    def append(self, payload: dict[str, Any]) -> None:
        """Appends one record and returns only after it is on disk. A failed append (disk full, I/O error) is cut
        off again, so neither a torn record in the middle of the log nor a record the caller was told had failed
        survives to replay; if even that fails, the log refuses every later append."""
        if self.broken:
            raise OSError(f"WAL {self.path} could not be repaired after a failed write; restart the server.")
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if len(body) > MAX_RECORD_BYTES:
            raise ValueError(f"one write of {len(body)} bytes is over the log's record limit of {MAX_RECORD_BYTES}; "
                             "send fewer items per call.")
        fd = self._f.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            os.write(fd, _HEADER.pack(_MAGIC, len(body), zlib.crc32(body)) + body)  # unbuffered: nothing lingers
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError:
                self.broken = True
            raise
        self.records += 1
        if self.oldest_t is None:
            self.oldest_t = time.time()

    def truncate(self) -> None:
        self._f.truncate(0)
        self._f.seek(0)
        os.fsync(self._f.fileno())
        self.records = 0
        self.oldest_t = None

    def size_bytes(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
