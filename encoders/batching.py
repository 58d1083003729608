"""Micro-batching of query encodings: concurrent requests for one encoder are encoded in one call.

Each single-input call (`encode_texts([text])`, `encode_images([image])`) is queued; one worker thread per batcher
takes whatever is queued (up to `max_batch`), waits at most `window_ms` after the oldest request's arrival for
more, encodes the batch in one call and hands each caller its row. Under load requests pile up while the worker
is busy, so they are batched without waiting; alone, a request waits at most the window.

- The queue is bounded: a request beyond `max_queue` waiting gets `QueueFull` (RESOURCE_EXHAUSTED at the edge).
- Deadlines: the gRPC edge sets the request's deadline with `deadline()`; a request whose deadline passes while it
  waits is dropped before encoding and its caller gets `DeadlineExceeded`.
- Repeated query texts hit an LRU cache of embeddings (`cache_size` entries; 0 = off) and never queue.
Calls with more than one input (indexing, live writes) go straight to the encoder.
"""
from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("vitrine_deadline", default=None)


class QueueFull(RuntimeError):
    """Too many encodings are waiting; the caller should back off and retry."""


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before its encoding ran."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Requests encoded inside this block give up `seconds` from now (None: no deadline)."""
    token = _DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


_SCOPE: contextvars.ContextVar[str] = contextvars.ContextVar("vitrine_cache_scope", default="")


@contextlib.contextmanager
def cache_scope(scope: str) -> Iterator[None]:
    """Caches of shared models (query embeddings, cross-encoder scores) are kept apart per scope (the tenant), so
    no tenant can time a query to learn whether another tenant searched the same text."""
    token = _SCOPE.set(scope)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def current_scope() -> str:
    return _SCOPE.get()


@dataclass
class _Request:
    item: Any
    arrived: float
    deadline: float | None
    future: Future


class Batcher:
    """Runs `fn(list_of_inputs) -> (N, D) array` on batches of single-input requests; see the module docstring."""

    def __init__(self, fn: Callable[[list], np.ndarray], name: str, window_ms: float = 2.0, max_batch: int = 32,
                 max_queue: int = 256) -> None:
        self.fn = fn
        self.name = name
        self.window_s = window_ms / 1e3
        self.max_batch = max_batch
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=max_queue)
        self.batches = 0
        self.encoded = 0
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def _start(self) -> None:
        # Started by the first request, not at construction: a hot swap builds models on a low-priority loader
        # thread, and a worker started there would inherit its priority.
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"vitrine-batch-{self.name}", daemon=True)
                self._thread.start()

    def submit(self, item: Any) -> np.ndarray:
        """The encoding of one input (D,), computed with whatever else is queued."""
        if self._thread is None:
            self._start()
        due = _DEADLINE.get()
        req = _Request(item, time.monotonic(), due, Future())
        try:
            self._queue.put_nowait(req)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} {self.name} encodings are already waiting; retry later.") from None
        try:
            return req.future.result(timeout=None if due is None else max(due - time.monotonic(), 0.0))
        except TimeoutError:
            req.future.cancel()  # still queued: the worker skips it; already running: its row is dropped
            raise DeadlineExceeded(f"deadline passed while waiting to encode ({self.name}).") from None

    def close(self) -> None:
        """Stops the worker once the queue drains (the encoder it holds can then be freed)."""
        if self._thread is not None:
            self._queue.put(None)

    def _take(self) -> list[_Request] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        until = batch[0].arrived + self.window_s
        while len(batch) < self.max_batch:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                left = until - time.monotonic()
                if left <= 0:
                    break
                try:
                    req = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if req is None:  # closing: finish this batch, then stop
                self._queue.put(None)
                break
            batch.append(req)
        return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            now = time.monotonic()
            live = []
            for req in batch:
                if not req.future.set_running_or_notify_cancel():
                    continue  # its caller gave up (deadline)
                if req.deadline is not None and req.deadline <= now:
                    req.future.set_exception(DeadlineExceeded(f"deadline passed while waiting to encode ({self.name})."))
                else:
                    live.append(req)
            if live:
                self._encode(live)

    def _encode(self, live: list[_Request]) -> None:
        try:
            out = self.fn([r.item for r in live])  # (B, D)
            if len(out) != len(live):
                raise RuntimeError(f"{self.name} encoder returned {len(out)} rows for {len(live)} inputs")
        except Exception as exc:  # noqa: BLE001 - the worker keeps going
            if len(live) > 1:  # one bad input must not fail the requests batched with it: retry one by one
                for req in live:
                    self._encode([req])
                return
            live[0].future.set_exception(exc)
            return
        self.batches += 1
        self.encoded += len(live)
        for req, row in zip(live, out):
            req.future.set_result(np.array(row))  # a copy: a cached row must not pin its whole batch


class _Lru:
    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            row = self._d.get(key)
            if row is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
            return row

    def put(self, key: str, row: np.ndarray) -> None:
        if not self.size:
            return
        with self._lock:
            self._d[key] = row
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


class BatchingEncoder:
    """Wraps a text (and, for CLIP, image) encoder: single-text and single-image calls are micro-batched, texts
    cached; everything else (name, version, dim, attribute heads, ...) is the wrapped encoder's."""

    def __init__(self, encoder: Any, window_ms: float = 2.0, max_batch: int = 32, max_queue: int = 256,
                 cache_size: int = 10_000, name: str = "text") -> None:
        self.encoder = encoder
        self.text_batcher = Batcher(encoder.encode_texts, f"{name} text", window_ms, max_batch, max_queue)
        self.image_batcher = (Batcher(encoder.encode_images, f"{name} image", window_ms, max_batch, max_queue)
                              if hasattr(encoder, "encode_images") else None)
        self.cache = _Lru(cache_size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if len(texts) != 1:
            return self.encoder.encode_texts(list(texts), batch_size=batch_size, progress=progress)
        text = texts[0]
        key = (_SCOPE.get(), text)
        row = self.cache.get(key)
        if row is None:
            row = self.text_batcher.submit(text)
            self.cache.put(key, row)
        return row[None, :].copy()  # (1, D); callers may modify it

    def encode_images(self, images: list, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if self.image_batcher is None:
            raise AttributeError(f"{type(self.encoder).__name__} encodes no images")
        if len(images) != 1:
            return self.encoder.encode_images(images, batch_size=batch_size, progress=progress)
        return self.image_batcher.submit(images[0])[None, :].copy()

    def close(self) -> None:
        for b in (self.text_batcher, self.image_batcher):
            if b is not None:
                b.close()

    def stats(self) -> dict[str, float]:
        batchers = [b for b in (self.text_batcher, self.image_batcher) if b is not None]
        return {"cache_hits": self.cache.hits, "cache_misses": self.cache.misses,
                "batches": sum(b.batches for b in batchers), "encoded": sum(b.encoded for b in batchers)}


def unbatched(encoder: Any) -> Any:
    """The encoder a BatchingEncoder wraps (or `encoder` itself): catalog documents skip the query micro-batcher and
    its cache, since long texts and whole photos would pad the short queries batched beside them."""
    return encoder.encoder if isinstance(encoder, BatchingEncoder) else encoder
