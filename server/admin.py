"""Hot swap: load a new bundle (and second-stage models) beside the serving one, then switch atomically.

A search holds the searcher it started with to the end, so switching never fails or stalls a query; the old
bundle is closed only after `close_after_s`, long past any search's deadline. Reloads come from the Admin RPC
or from a watcher that follows a `current` pointer (a symlink, as the registry writes it).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from vitrine.proto import search_pb2, search_pb2_grpc
from vitrine.ranking.pipeline import Searcher
from vitrine.server.state import ServingState, freeze_heap, model_versions
from vitrine.server.status import Metrics, StatusError, abort_on_error

log = logging.getLogger("vitrine.admin")

# Builds a searcher from (bundle dir, reranker dir or None, ranker dir or None); a None keeps today's model.
Loader = Callable[[str, "str | None", "str | None"], Searcher]


def retire(searcher: Searcher) -> None:
    """Closes a swapped-out searcher's bundle and stops its encoders' batching threads, so its models can be freed."""
    searcher.bundle.close()
    for encoder in (searcher.text_encoder, searcher.clip_encoder):
        close = getattr(encoder, "close", None)
        if close is not None:
            close()


class Reloader:
    """Serialises reloads and retires old searchers; shared by the Admin RPC and the pointer watcher."""

    def __init__(self, state: ServingState, loader: Loader, pointer: str | None = None, close_after_s: float = 60.0) -> None:
        self.state = state
        self.loader = loader
        self.pointer = pointer
        self.close_after_s = close_after_s
        self._lock = threading.Lock()
        self.load_nice = 10

    def reload(self, bundle: str = "", reranker: str = "", ranker: str = "") -> tuple[Searcher, Searcher | None, float]:
        """Loads and switches; returns (new, old, load seconds). Raises ValueError/FileNotFoundError on a bad path."""
        if self.state.live is not None:
            # Acknowledged writes live in the serving bundle's WAL; a swap would drop them from search.
            raise ValueError("bundle: this server accepts live catalog writes; hot swap needs `vitrine serve --read-only` "
                             "(index the writes into the next bundle instead).")
        target = bundle or self.pointer
        if not target:
            raise ValueError("bundle: give a bundle directory (this server follows no 'current' pointer).")
        path = Path(target).resolve()
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(f"bundle: {target} is not a Vitrine bundle (no manifest.json).")
        with self._lock:
            t0 = time.perf_counter()
            new = self._load_in_background(str(path), reranker or None, ranker or None)
            old = self.state.swap(new)
        seconds = time.perf_counter() - t0
        freeze_heap()
        log.info("switched to bundle %s (%s) in %.1f s", new.bundle.version, path, seconds)
        if old is not None and old.bundle is not new.bundle:
            timer = threading.Timer(self.close_after_s, retire, args=(old,))
            timer.daemon = True
            timer.start()
        return new, old, seconds

    def _load_in_background(self, path: str, reranker: str | None, ranker: str | None) -> Searcher:
        """Runs the loader in a thread at a lower CPU priority, so loading competes less with serving."""
        out: dict[str, object] = {}

        def work() -> None:
            try:
                # Linux applies a thread's nice value to that thread (and threads it starts); elsewhere skip.
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.load_nice)
            except (AttributeError, OSError):
                pass
            try:
                out["searcher"] = self.loader(path, reranker, ranker)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                out["error"] = exc

        thread = threading.Thread(target=work, name="vitrine-bundle-load")
        thread.start()
        thread.join()
        if "error" in out:
            raise out["error"]  # type: ignore[misc]
        return out["searcher"]  # type: ignore[return-value]

    def watch(self, every_s: float, stop: threading.Event) -> threading.Thread:
        """Polls the pointer and reloads when it names another directory; a failed load keeps the old bundle."""
        if not self.pointer:
            raise ValueError("watching needs a 'current' pointer to follow.")

        def loop() -> None:
            seen = Path(self.pointer).resolve()
            while not stop.wait(every_s):
                now = Path(self.pointer).resolve()
                if now == seen:
                    continue
                try:
                    self.reload()
                    seen = now
                except Exception:  # noqa: BLE001 - a bad new bundle must not take serving down
                    log.exception("could not switch to %s; still serving the previous bundle", now)
                    seen = now

        thread = threading.Thread(target=loop, name="vitrine-pointer-watch", daemon=True)
        thread.start()
        return thread


class AdminServicer(search_pb2_grpc.AdminServicer):
    def __init__(self, reloader: Reloader, authorize: Callable[[grpc.ServicerContext], None],
                 metrics: Metrics | None = None) -> None:
        self.reloader = reloader
        self.authorize = authorize
        self.metrics = metrics

    @abort_on_error
    def Reload(self, request: search_pb2.ReloadRequest, context: grpc.ServicerContext) -> search_pb2.ReloadResponse:
        self.authorize(context)
        try:
            new, old, seconds = self.reloader.reload(request.bundle, request.reranker, request.ranker)
        except FileNotFoundError as exc:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except ValueError as exc:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return search_pb2.ReloadResponse(bundle_version=new.bundle.version,
                                         previous_bundle_version=old.bundle.version if old is not None else "",
                                         model_versions=model_versions(new), load_ms=seconds * 1e3)
