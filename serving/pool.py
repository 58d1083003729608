"""The model pool: tenants whose bundles name the same model (same weights, same backend) share one loaded copy and
one micro-batcher; a LoRA adapter is put on a shared base whose weights are not copied."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("vitrine")


@dataclass
class _Entry:
    model: Any
    users: int = 0
    bytes: int = 0
    needs: tuple = ()          # keys this entry holds (an adapter holds its base)
    label: str = ""


@dataclass
class ModelPool:
    """Loaded models by identity, counted by the searchers using them; a model is closed when its last user goes.

    `share=False` gives every searcher its own copies (what a pool per searcher did before tenants)."""

    share: bool = True
    _entries: dict[Hashable, _Entry] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _loading: dict[Hashable, threading.Event] = field(default_factory=dict)
    _private: int = 0

    def acquire(self, key: Hashable, load: Callable[[], Any], label: str = "", needs: list | None = None) -> tuple[Hashable, Any]:
        """The model for `key`, loaded once by `load()`; returns (the key to release, the model). Keys `load` appends
        to `needs` (models it acquired itself, e.g. an adapter's base) are released when this entry is.

        A load runs outside the pool's lock (it can take minutes): other tenants acquire and release meanwhile, and
        a second caller of the same key waits for the first one's load instead of loading a copy."""
        while True:
            with self._lock:
                if not self.share:
                    self._private += 1
                    key = (key, self._private)
                entry = self._entries.get(key)
                if entry is not None:
                    entry.users += 1
                    return key, entry.model
                pending = self._loading.get(key)
                if pending is None:
                    pending = self._loading[key] = threading.Event()
                    break
            pending.wait()   # another caller is loading this key: take its model once it is in
        try:
            model = load()
        except BaseException:
            with self._lock:
                del self._loading[key]
            pending.set()
            self.release(list(needs or ()))   # what `load` acquired before failing
            raise
        with self._lock:
            entry = self._entries[key] = _Entry(model, 1, model_bytes(model), tuple(needs or ()), label or str(key))
            del self._loading[key]
        pending.set()
        log.info("loaded %s (%.1f MB)", entry.label, entry.bytes / 1e6)
        return key, model

    def loaded(self, key: Hashable) -> bool:
        return self.share and key in self._entries

    def release(self, keys: list[Hashable]) -> None:
        with self._lock:
            for key in keys:
                self._release_one(key)

    def _release_one(self, key: Hashable) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.users -= 1
        if entry.users > 0:
            return
        del self._entries[key]
        close = getattr(entry.model, "close", None)
        if close is not None:
            close()
        for dep in entry.needs:
            self._release_one(dep)

    def stats(self) -> list[dict[str, Any]]:
        """Each loaded model: what it is, how many searchers use it, and its weights' bytes."""
        with self._lock:
            return [{"model": e.label, "users": e.users, "bytes": e.bytes} for e in self._entries.values()]


def model_bytes(model: Any) -> int:
    """Bytes of the weights a loaded model holds itself: torch parameters (an adapter's own only) or ONNX files."""
    inner = getattr(model, "encoder", model)  # a BatchingEncoder wraps the model
    size = getattr(inner, "weight_bytes", None)
    if size is not None:
        return int(size)
    torch_model = getattr(inner, "model", None)
    if torch_model is not None and hasattr(torch_model, "named_parameters"):
        shared = getattr(inner, "shared_params", set())
        return sum(p.numel() * p.element_size() for _, p in torch_model.named_parameters() if id(p) not in shared)
    return 0
