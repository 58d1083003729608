"""What the servicers serve from: the current `Served` (swapped atomically on reload) and the live index, if any.

The server is built before its bundle has loaded (health says NOT_SERVING meanwhile), so the state starts empty
and `attach` fills it once; the servicers hold this one object from construction on and are never patched.
"""
from __future__ import annotations

import contextlib
import threading

import grpc

from vitrine.indexer.live import LiveIndex
from vitrine.ranking.pipeline import Searcher
from vitrine.server.status import StatusError
from vitrine.serving.assemble import Served


class ServingState:
    def __init__(self, served: Served | None = None, live: LiveIndex | None = None) -> None:
        self._served = served
        self._live = live
        self._lock = threading.Lock()

    @property
    def served(self) -> Served:
        served = self._served
        if served is None:
            raise StatusError(grpc.StatusCode.UNAVAILABLE, "the server is still loading its bundle; retry shortly.")
        return served

    @property
    def searcher(self) -> Searcher:
        return self.served.searcher

    @property
    def loaded(self) -> bool:
        return self._served is not None

    @property
    def live(self) -> LiveIndex | None:
        return self._live

    def require_live(self) -> LiveIndex:
        if self._live is None:
            raise StatusError(grpc.StatusCode.UNAVAILABLE, "live catalog updates are not available: the server is "
                                                           "loading or was started with --read-only.")
        return self._live

    def reading(self) -> contextlib.AbstractContextManager:
        """With live updates, searches share the index lock with writes: FAISS add/remove is not safe beside a search."""
        return self._live.lock.read() if self._live is not None else contextlib.nullcontext()

    def attach(self, served: Served, live: LiveIndex | None = None) -> None:
        """Completes a state created empty: the live index first, so no search runs unlocked beside a write."""
        with self._lock:
            if self._served is not None:
                raise RuntimeError("the serving state already has a searcher; use swap() to replace it.")
            self._live = live
            self._served = served

    def swap(self, served: Served) -> Served | None:
        with self._lock:
            old, self._served = self._served, served
        return old


def freeze_heap() -> None:
    """Moves every object alive now (models, tokenizers, the docstore: ~600k objects on fashion) out of the cyclic
    garbage collector's reach. A full collection over them takes ~240 ms on this CPU and holds the GIL, stalling every
    request: it was the p99 of a loaded server. Called once the bundle has loaded, and after each hot swap (which
    first collects once, so the old bundle's reference cycles are freed rather than frozen)."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


def model_versions(searcher: Searcher) -> dict[str, str]:
    """Every model that can touch a response, by role: bundle encoders, then the second stage's."""
    out = {name: str(model.version or model.name) for name, model in searcher.bundle.manifest.models.items()}
    if searcher.reranker is not None:
        out["reranker"] = searcher.reranker.version
    if searcher.ranker is not None:
        out["ranker"] = searcher.ranker.version
    return out
