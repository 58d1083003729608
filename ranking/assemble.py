"""Assembles a Searcher from a bundle and its models: what the server, the evaluator and the trainers all open.

Models come from a `ModelPool`: tenants whose bundles name the same model (same weights, same backend) share one
copy in memory and one micro-batcher; a LoRA adapter is put on a shared base whose weights are not copied.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitrine.encoders.config import EncoderConfig
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bundle import Bundle
from vitrine.ranking.pipeline import SearchConfig, Searcher, clip_text_trust
from vitrine.ranking.rerank import RerankConfig

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


def _onnx_bytes(record: dict, backend: str, folder: Path) -> int:
    variant = record.get("variants", {}).get(backend, {})
    return int(variant.get("bytes") or sum((folder / f).stat().st_size for f in variant.get("files", {}).values()))


def open_searcher(bundle_path: str, *, ann: AnnConfig = AnnConfig(), encoders: EncoderConfig = EncoderConfig(),
                  search: SearchConfig = SearchConfig(), rerank: RerankConfig = RerankConfig(),
                  reranker: str | None = None, ranker: str | None = None, batching: bool = True,
                  pool: ModelPool | None = None) -> Searcher:
    """Opens a bundle with the encoders its manifest names and the optional second-stage models, warmed up.

    The text encoder, both CLIP towers and the cross-encoder run on the backend `encoders.backend` picks (encoders/onnx.py:
    "auto" = the fastest exported variant within `max_backend_loss` nDCG@10 of torch); with `batching`, query
    encodings of concurrent requests are micro-batched and cached (encoders/batching.py). Models come from `pool`
    (shared with other searchers of that pool); `retire(searcher)` gives them back.
    """
    pool = pool if pool is not None else ModelPool()
    bundle = Bundle(bundle_path, ann=ann)
    backends: dict[str, str] = {}
    keys: list[Hashable] = []
    try:
        return _assemble(bundle, pool, keys, backends, encoders, search, rerank, reranker, ranker, batching)
    except BaseException:
        pool.release(keys)   # a failed open gives back every model it took
        bundle.close()
        raise


def _assemble(bundle: Bundle, pool: ModelPool, keys: list[Hashable], backends: dict[str, str], encoders: EncoderConfig,
              search: SearchConfig, rerank: RerankConfig, reranker: str | None, ranker: str | None,
              batching: bool) -> Searcher:
    from vitrine.encoders import onnx
    from vitrine.encoders.text import ADAPTER_FILE, resolve_text_model
    from vitrine.indexer.bundle import CLIP_VARIANTS, TEXT_VARIANTS

    requested = requested_backend(encoders)
    models = bundle.manifest.get("models", {})

    def batched(encoder: object, name: str) -> object:
        if not batching:
            return encoder
        from vitrine.encoders.batching import BatchingEncoder

        return BatchingEncoder(encoder, encoders.batch_window_ms, encoders.batch_max, encoders.batch_queue,
                               encoders.cache_size, name)

    def pick(record: dict, key: Callable[[str], Hashable]) -> str:
        """"auto" prefers a backend another searcher already loaded for this model, if this bundle's check allows it:
        tenants whose bundles measured the same model slightly differently still share one copy."""
        chosen = onnx.choose_backend(record, requested, encoders.max_backend_loss)
        if requested == onnx.AUTO and not pool.loaded(key(chosen)):
            for backend in onnx.acceptable(record, encoders.max_backend_loss):
                if pool.loaded(key(backend)):
                    return backend
        return chosen

    def take(key: Hashable, load: Callable[[], Any], label: str, needs: list | None = None) -> Any:
        held, model = pool.acquire(key, load, label, needs)
        keys.append(held)
        return model

    def with_variants(role: str, folder: Path, load: Callable[..., Any]) -> Any:
        """A bundle model with ONNX variants: its backend picked, then the model taken from the pool (loaded once)."""
        meta, record = models[role], onnx.read_record(folder)
        key = lambda b: (role, b, meta["name"], meta.get("version"), encoders.device)  # noqa: E731
        backend = backends[role] = pick(record, key)
        return take(key(backend), lambda: batched(load(meta["name"], backend, folder, record, encoders), role),
                    f"{role} {meta['name']} ({backend})")

    encoder = None
    if "text" in bundle.vectors:
        meta = models["text"]
        path = resolve_text_model(meta["name"])
        if (Path(path) / ADAPTER_FILE).is_file():
            # A LoRA tenant: the adapter on the shared torch base (its merged ONNX export would be a whole copy).
            backends["text"] = "torch+lora"
            base: list[Hashable] = []
            encoder = take(("text", "lora", str(Path(path).resolve()), meta.get("version"), encoders.device),
                           lambda: batched(_adapter_encoder(pool, path, encoders, base), "text"), f"text adapter {path}",
                           needs=base)
        else:
            encoder = with_variants("text", bundle.path / TEXT_VARIANTS, _text_encoder)
    clip = with_variants("clip", bundle.path / CLIP_VARIANTS, _clip_encoder) if "clip" in models else None
    cross, ltr = _second_stage(pool, keys, backends, reranker, ranker, encoders, rerank, requested)
    searcher = Searcher(bundle, encoder, search, clip_encoder=clip, reranker=cross, ranker=ltr, rerank=rerank)
    if clip is not None:
        _log_clip_trust(bundle, search)
    searcher.backends = backends
    searcher.pool, searcher.pool_keys = pool, keys
    log.info("serving backends: %s", backends)
    return searcher


def _log_clip_trust(bundle: Bundle, search: SearchConfig) -> None:
    """Says once, at open, whether CLIP text will join text queries (the searcher decides per query the same way)."""
    trusted, why = clip_text_trust(bundle.manifest, search.clip_text_min_recall)
    if "check" not in bundle.manifest["models"]["clip"]:
        log.warning("CLIP text joins text queries unchecked: %s; re-index (`vitrine index`) to check it", why)
    else:
        log.info("CLIP text %s text queries: %s", "joins" if trusted else "is left out of", why)


def requested_backend(encoders: EncoderConfig) -> str:
    """The backend asked for: the ONNX variants run on the CPU, so with a GPU "auto" keeps the torch models on it."""
    from vitrine.encoders import onnx
    from vitrine.encoders.base import pick_device

    return encoders.backend if encoders.backend != onnx.AUTO or pick_device(encoders.device) == "cpu" else "torch"


def _second_stage(pool: ModelPool, keys: list[Hashable], backends: dict[str, str], reranker: str | None,
                  ranker: str | None, encoders: EncoderConfig, rerank: RerankConfig, requested: str) -> tuple[Any, Any]:
    """The cross-encoder (from the pool) and the LightGBM ranker (small: one per searcher)."""
    from vitrine.encoders import onnx
    from vitrine.encoders.text import resolve_text_model

    cross = ltr = None
    if reranker:
        from vitrine.ranking.rerank import ONNX_DIR, CrossEncoderReranker

        folder = Path(resolve_text_model(reranker)) / ONNX_DIR
        record = onnx.read_record(folder)
        backend = backends["reranker"] = onnx.choose_backend(record, requested, encoders.max_backend_loss)

        def load_cross() -> CrossEncoderReranker:
            model = CrossEncoderReranker(reranker, rerank, device=encoders.device, backend=backend, threads=rerank.threads)
            model.score("warm up", ["warm up"])
            if backend != "torch":
                model.weight_bytes = _onnx_bytes(record, backend, folder)
            return model

        # The cross-encoder's settings (depth, blend) are per searcher: the model is shared only with the same ones.
        where = Path(resolve_text_model(reranker))
        held, cross = pool.acquire(("reranker", backend, str(where.resolve()) if where.exists() else reranker, rerank,
                                    encoders.device), load_cross, f"cross-encoder {reranker} ({backend})")
        keys.append(held)
    if ranker:
        from vitrine.ranking.ltr import LtrRanker

        ltr = LtrRanker(ranker)
        if ltr.meta.get("reranker") and cross is None:
            log.warning("ranker %s was trained with cross-encoder scores but no reranker is loaded; "
                        "its cross_* features will be missing", ranker)
    return cross, ltr


def with_second_stage(searcher: Searcher, reranker: str | None, ranker: str | None, *,
                      encoders: EncoderConfig = EncoderConfig(), rerank: RerankConfig = RerankConfig()) -> Searcher:
    """The same bundle and encoders with other second-stage models (None keeps searcher's): an experiment's other
    arm. It holds the bundle but does not own it: retire only its own models with `pool.release(arm.pool_keys)`."""
    import copy


    requested = requested_backend(encoders)
    arm = copy.copy(searcher)
    arm.backends, arm.pool_keys = dict(searcher.backends), []
    cross, ltr = _second_stage(searcher.pool, arm.pool_keys, arm.backends, reranker, ranker, encoders, rerank, requested)
    if reranker:
        arm.reranker, arm.rerank = cross, rerank
    if ranker:
        arm.ranker = ltr
    return arm


def retire(searcher: Searcher) -> None:
    """Closes a swapped-out or dropped searcher's bundle and gives its models back to their pool (a model no other
    searcher uses is closed: its batching thread stops and its weights can be freed)."""
    if getattr(searcher, "retired", False):   # idempotent: a drop racing a swap must not release twice
        return
    searcher.retired = True
    searcher.bundle.close()
    pool = getattr(searcher, "pool", None)
    if pool is not None:
        arm = getattr(searcher, "arm_b", None)
        keys = searcher.pool_keys + (arm.pool_keys if arm is not None else [])
        searcher.pool_keys = []
        if arm is not None:
            arm.pool_keys = []
        pool.release(keys)
        return
    for encoder in (searcher.text_encoder, searcher.clip_encoder):
        close = getattr(encoder, "close", None)
        if close is not None:
            close()


def _text_encoder(name: str, backend: str, folder: Path, record: dict, encoders: EncoderConfig) -> Any:
    if backend == "torch":
        from vitrine.encoders.text import SentenceTransformerEncoder

        encoder = SentenceTransformerEncoder(name, device=encoders.device)
    else:
        from vitrine.encoders.text import OnnxTextEncoder

        encoder = OnnxTextEncoder(folder, backend, encoders.threads)
        encoder.weight_bytes = _onnx_bytes(record, backend, folder)
    encoder.encode_texts(["warm up"])  # the first call pays one-off costs; not a user's query
    return encoder


def _clip_encoder(name: str, backend: str, folder: Path, record: dict, encoders: EncoderConfig) -> Any:
    from vitrine.encoders.clip import ClipEncoder

    clip = ClipEncoder(name, device=encoders.device, variants=folder, backend=backend, threads=encoders.threads)
    clip.encode_texts(["warm up"])
    if backend != "torch":
        clip.weight_bytes = _onnx_bytes(record, backend, folder) + sum(
            p.numel() * p.element_size() for p in (clip.attribute_heads.parameters() if hasattr(
                getattr(clip, "attribute_heads", None), "parameters") else ()))
    return clip


def _adapter_encoder(pool: ModelPool, path: str, encoders: EncoderConfig, needs: list[Hashable]) -> Any:
    """The adapter at `path` on its base, the base taken from the pool (loaded once for every adapter on it)."""
    import json

    from vitrine.encoders.text import ADAPTER_FILE, SentenceTransformerEncoder, adapter_encoder, resolve_text_model

    base_name = json.loads((Path(path) / ADAPTER_FILE).read_text())["base"]

    def load_base() -> SentenceTransformerEncoder:
        return SentenceTransformerEncoder(base_name, device=encoders.device)

    held, base = pool.acquire(("text", "torch", str(resolve_text_model(base_name)), "base", encoders.device), load_base,
                              f"text base {base_name} (torch)")
    needs.append(held)   # released by the pool if what follows fails (acquire's `needs`)
    encoder = adapter_encoder(base, path)
    encoder.encode_texts(["warm up"])
    return encoder
