"""Assembles what a server serves from a bundle and its models: a `Served` record, whole when built.

The server, the evaluator and the trainers all open bundles here. Models come from a `ModelPool` (serving/pool.py),
so tenants whose bundles name the same model share one copy; `Served.retire()` gives them back.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from vitrine.encoders import onnx
from vitrine.encoders.config import Backend, EncoderConfig
from vitrine.indexer.bundle import Bundle
from vitrine.indexer.manifest import ModelRecord
from vitrine.ranking.pipeline import SearchConfig, Searcher, clip_text_trust
from vitrine.ranking.rerank import RerankConfig
from vitrine.serving.config import ExperimentConfig, VitrineConfig
from vitrine.serving.pool import ModelPool

log = logging.getLogger("vitrine")


@dataclass(frozen=True)
class Served:
    """A searcher with everything it was assembled with: the backend each model runs on, the pooled models it holds,
    and an experiment's B arm (the same bundle and encoders with other second-stage models).

    `pool` None: the searcher was built by hand (tests, tools) and owns its encoders; `retire()` closes them."""

    searcher: Searcher
    backends: Mapping[str, Backend] = field(default_factory=dict)
    pool: ModelPool | None = None
    keys: tuple[Hashable, ...] = ()
    arm_b: Searcher | None = None
    _retired: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    _retiring: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "backends", MappingProxyType(dict(self.backends)))

    @property
    def bundle(self) -> Bundle:
        return self.searcher.bundle

    @property
    def retired(self) -> bool:
        return self._retired.is_set()

    def retire(self) -> None:
        """Closes the bundle and gives the models back to their pool (a model no other searcher uses is closed: its
        batching thread stops and its weights can be freed). Idempotent: a drop racing a swap releases once."""
        with self._retiring:
            if self._retired.is_set():
                return
            self._retired.set()
        self.searcher.bundle.close()
        if self.pool is not None:
            self.pool.release(list(self.keys))
            return
        for encoder in (self.searcher.text_encoder, self.searcher.clip_encoder):
            close = getattr(encoder, "close", None)
            if close is not None:
                close()


def open_served(bundle_path: str, config: VitrineConfig = VitrineConfig(), *, reranker: str | None = None,
                ranker: str | None = None, pool: ModelPool | None = None, batching: bool = True,
                experiment: ExperimentConfig | None = None) -> Served:
    """Opens a bundle with the encoders its manifest names and the optional second-stage models, warmed up.

    The text encoder, both CLIP towers and the cross-encoder run on the backend `config.encoders.backend` picks
    (encoders/onnx.py: "auto" = the fastest exported variant within `max_backend_loss` nDCG@10 of torch); with
    `batching`, query encodings of concurrent requests are micro-batched and cached (encoders/batching.py). Models
    come from `pool` (shared with other searchers of that pool). `experiment` adds its B arm.
    """
    assembly = _Assembly(pool if pool is not None else ModelPool(), config.encoders, config.rerank, batching)
    bundle = Bundle(bundle_path, ann=config.index)
    try:
        searcher = assembly.searcher(bundle, config.search, reranker, ranker)
        arm_b = None
        if experiment is not None:
            arm_b = assembly.other_arm(searcher, experiment.reranker or None, experiment.ranker or None)
    except BaseException:
        assembly.pool.release(assembly.keys)   # a failed open gives back every model it took
        bundle.close()
        raise
    log.info("serving backends: %s", {role: str(b) for role, b in assembly.backends.items()})
    return Served(searcher, assembly.backends, assembly.pool, tuple(assembly.keys), arm_b)


def requested_backend(encoders: EncoderConfig) -> Backend:
    """The backend asked for: the ONNX variants run on the CPU, so with a GPU "auto" keeps the torch models on it."""
    from vitrine.encoders.base import pick_device

    if encoders.backend == Backend.AUTO and pick_device(encoders.device) != "cpu":
        return Backend.TORCH
    return encoders.backend


class _Assembly:
    """One open in progress: which models it took from the pool (released together) and on which backends."""

    def __init__(self, pool: ModelPool, encoders: EncoderConfig, rerank: RerankConfig, batching: bool) -> None:
        self.pool, self.encoders, self.rerank, self.batching = pool, encoders, rerank, batching
        self.requested = requested_backend(encoders)
        self.keys: list[Hashable] = []
        self.backends: dict[str, Backend] = {}

    def searcher(self, bundle: Bundle, search: SearchConfig, reranker: str | None, ranker: str | None) -> Searcher:
        from vitrine.indexer.variants import CLIP_VARIANTS, TEXT_VARIANTS

        models = bundle.manifest.models
        encoder = None
        if "text" in bundle.vectors:
            encoder = self.text_encoder(models["text"], bundle.path / TEXT_VARIANTS)
        clip = self.with_variants("clip", models.get("clip"), bundle.path / CLIP_VARIANTS, _clip_encoder) \
            if "clip" in models else None
        cross = self.cross_encoder(reranker) if reranker else None
        ltr = _ranker(ranker, cross) if ranker else None
        searcher = Searcher(bundle, encoder, search, clip_encoder=clip, reranker=cross, ranker=ltr, rerank=self.rerank)
        if clip is not None:
            _log_clip_trust(bundle, search)
        return searcher

    def other_arm(self, searcher: Searcher, reranker: str | None, ranker: str | None) -> Searcher:
        """The same bundle and encoders with other second-stage models (None keeps searcher's): an experiment's B
        arm. Its models are this assembly's, so the Served record releases them with the A arm's."""
        # Its cross-encoder's backend is not recorded: Info reports arm A's, which every request outside it gets.
        cross = self.cross_encoder(reranker, backends={}) if reranker else None
        ltr = _ranker(ranker, cross or searcher.reranker) if ranker else None
        return searcher.with_second_stage(cross, ltr, self.rerank)

    def take(self, key: Hashable, load: Callable[[], Any], label: str, needs: list | None = None) -> Any:
        held, model = self.pool.acquire(key, load, label, needs)
        self.keys.append(held)
        return model

    def batched(self, encoder: object, name: str) -> object:
        if not self.batching:
            return encoder
        from vitrine.encoders.batching import BatchingEncoder

        e = self.encoders
        return BatchingEncoder(encoder, e.batch_window_ms, e.batch_max, e.batch_queue, e.cache_size, name)

    def pick(self, record: dict, key: Callable[[str], Hashable]) -> Backend:
        """"auto" prefers a backend another searcher already loaded for this model, if this bundle's check allows it:
        tenants whose bundles measured the same model slightly differently still share one copy."""
        chosen = onnx.choose_backend(record, self.requested, self.encoders.max_backend_loss)
        if self.requested == Backend.AUTO and not self.pool.loaded(key(chosen)):
            for backend in onnx.acceptable(record, self.encoders.max_backend_loss):
                if self.pool.loaded(key(backend)):
                    return backend
        return chosen

    def with_variants(self, role: str, meta: ModelRecord, folder: Path, load: Callable[..., Any]) -> Any:
        """A bundle model with ONNX variants: its backend picked, then the model taken from the pool (loaded once)."""
        record, device = onnx.read_record(folder), self.encoders.device
        key = lambda b: (role, b, meta.name, meta.version, device)  # noqa: E731
        backend = self.backends[role] = self.pick(record, key)
        return self.take(key(backend), lambda: self.batched(load(meta.name, backend, folder, record, self.encoders), role),
                         f"{role} {meta.name} ({backend})")

    def text_encoder(self, meta: ModelRecord, folder: Path) -> Any:
        from vitrine.encoders.text import ADAPTER_FILE, resolve_text_model

        path = resolve_text_model(meta.name)
        if not (Path(path) / ADAPTER_FILE).is_file():
            return self.with_variants("text", meta, folder, _text_encoder)
        # A LoRA tenant: the adapter on the shared torch base (its merged ONNX export would be a whole copy).
        self.backends["text"] = Backend.TORCH_LORA
        base: list[Hashable] = []
        return self.take(("text", "lora", str(Path(path).resolve()), meta.version, self.encoders.device),
                         lambda: self.batched(self.adapter_encoder(path, base), "text"), f"text adapter {path}", needs=base)

    def adapter_encoder(self, path: str, needs: list[Hashable]) -> Any:
        """The adapter at `path` on its base, the base taken from the pool (loaded once for every adapter on it)."""
        from vitrine.encoders.text import ADAPTER_FILE, SentenceTransformerEncoder, adapter_encoder, resolve_text_model

        base_name = json.loads((Path(path) / ADAPTER_FILE).read_text())["base"]
        device = self.encoders.device
        held, base = self.pool.acquire(("text", "torch", str(resolve_text_model(base_name)), "base", device),
                                       lambda: SentenceTransformerEncoder(base_name, device=device),
                                       f"text base {base_name} (torch)")
        needs.append(held)   # released by the pool if what follows fails (acquire's `needs`)
        encoder = adapter_encoder(base, path)
        encoder.encode_texts(["warm up"])
        return encoder

    def cross_encoder(self, reranker: str, backends: dict[str, Backend] | None = None) -> Any:
        """The cross-encoder from the pool; its settings (depth, blend) are per searcher, so it is shared only with
        searchers of the same settings."""
        from vitrine.encoders.text import resolve_text_model
        from vitrine.ranking.rerank import ONNX_DIR, CrossEncoderReranker

        where = Path(resolve_text_model(reranker))
        folder = where / ONNX_DIR
        record = onnx.read_record(folder)
        backends = self.backends if backends is None else backends
        backend = backends["reranker"] = onnx.choose_backend(record, self.requested, self.encoders.max_backend_loss)
        rerank, device = self.rerank, self.encoders.device

        def load() -> CrossEncoderReranker:
            model = CrossEncoderReranker(reranker, rerank, device=device, backend=backend, threads=rerank.threads)
            model.score("warm up", ["warm up"])
            if backend != Backend.TORCH:
                model.weight_bytes = _onnx_bytes(record, backend, folder)
            return model

        return self.take(("reranker", backend, str(where.resolve()) if where.exists() else reranker, rerank, device),
                         load, f"cross-encoder {reranker} ({backend})")


def _ranker(ranker: str, cross: Any) -> Any:
    """The LightGBM ranker (small: one per searcher)."""
    from vitrine.ranking.ltr import LtrRanker

    ltr = LtrRanker(ranker)
    if ltr.meta.get("reranker") and cross is None:
        log.warning("ranker %s was trained with cross-encoder scores but no reranker is loaded; "
                    "its cross_* features will be missing", ranker)
    return ltr


def _log_clip_trust(bundle: Bundle, search: SearchConfig) -> None:
    """Says once, at open, whether CLIP text will join text queries (the searcher decides per query the same way)."""
    trusted, why = clip_text_trust(bundle.manifest, search.clip_text_min_recall)
    if bundle.manifest.models["clip"].check is None:
        log.warning("CLIP text joins text queries unchecked: %s; re-index (`vitrine index`) to check it", why)
    else:
        log.info("CLIP text %s text queries: %s", "joins" if trusted else "is left out of", why)


def _onnx_bytes(record: dict, backend: str, folder: Path) -> int:
    variant = record.get("variants", {}).get(backend, {})
    return int(variant.get("bytes") or sum((folder / f).stat().st_size for f in variant.get("files", {}).values()))


def _text_encoder(name: str, backend: Backend, folder: Path, record: dict, encoders: EncoderConfig) -> Any:
    if backend == Backend.TORCH:
        from vitrine.encoders.text import SentenceTransformerEncoder

        encoder = SentenceTransformerEncoder(name, device=encoders.device)
    else:
        from vitrine.encoders.text import OnnxTextEncoder

        encoder = OnnxTextEncoder(folder, backend, encoders.threads)
        encoder.weight_bytes = _onnx_bytes(record, backend, folder)
    encoder.encode_texts(["warm up"])  # the first call pays one-off costs; not a user's query
    return encoder


def _clip_encoder(name: str, backend: Backend, folder: Path, record: dict, encoders: EncoderConfig) -> Any:
    from vitrine.encoders.clip import ClipEncoder

    clip = ClipEncoder(name, device=encoders.device, variants=folder, backend=backend, threads=encoders.threads)
    clip.encode_texts(["warm up"])
    if backend != Backend.TORCH:
        heads = getattr(clip, "attribute_heads", None)
        clip.weight_bytes = _onnx_bytes(record, backend, folder) + sum(
            p.numel() * p.element_size() for p in (heads.parameters() if hasattr(heads, "parameters") else ()))
    return clip
