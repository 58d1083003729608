"""Locks around a bundle. One writer per bundle: an exclusive `flock` on `<bundle>/writer.lock` that records the
holder's pid. Within a live index, searches and writes share it through a readers/writer lock.

A writable server (its LiveIndex) and `vitrine index --force` over an existing bundle take the writer lock; read-only
servers never do, so any number of them share a bundle. The kernel drops the lock when the holder's process dies
(kill -9 included), so a crashed writer never leaves a bundle locked.
"""
from __future__ import annotations

import fcntl
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = "writer.lock"


class BundleLocked(RuntimeError):
    """Another process holds the bundle's writer lock."""


class WriterLock:
    """Held from `acquire()` until `release()` (or the process's end)."""

    def __init__(self, bundle_dir: str | Path, what: str = "a writable server") -> None:
        self.path = Path(bundle_dir) / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        """Takes the lock at once or raises BundleLocked naming the bundle and the holder's pid."""
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise BundleLocked(
                f"bundle {self.path.parent} is already open for writing by {holder}; run this one with --read-only, "
                f"or stop that process first (one writer per bundle).") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} ({self.what})\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                os.close(self._fd)  # closing the descriptor drops the flock
                self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "another process (pid unknown)"


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers so writes are never starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
