"""The gRPC edge: turns protos into library dataclasses and back, and maps domain errors to status codes in one place."""
from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, replace
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from encoders.images import ImageError
from indexer.live import LiveIndex, Overloaded, ReadWriteLock
from proto.vitrine.v1 import search_pb2, search_pb2_grpc
from ranking.fusion import FusionMethod
from ranking.features import FEATURES
from ranking.pipeline import InvalidRequest, Searcher, SearchRequest, SearchResult, Unsupported
from server.query_log import QueryLog, feature_record

log = logging.getLogger("vitrine.server")

STORED_FIELDS = ("id", "title", "description", "category", "attributes", "price", "image")
_FUSION = {search_pb2.FUSION_RRF: FusionMethod.RRF, search_pb2.FUSION_WEIGHTED: FusionMethod.WEIGHTED,
           search_pb2.FUSION_WEIGHTED_MAX: FusionMethod.WEIGHTED_MAX}
SERVICE_NAMES = ("vitrine.v1.Search", "vitrine.v1.Catalog", "vitrine.v1.Admin")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class ServerConfig:
    max_workers: int = 8
    # Requests beyond this many in flight are refused with RESOURCE_EXHAUSTED instead of queueing forever.
    max_concurrent_rpcs: int = 64
    max_message_bytes: int = 12 * 1024 * 1024
    grace_s: float = 5.0

    @classmethod
    def from_dict(cls, d: dict) -> ServerConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown key(s) in [server]: {', '.join(sorted(unknown))}.")
        cfg = cls(**d)
        for name in ("max_workers", "max_concurrent_rpcs", "max_message_bytes"):
            if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
                raise ValueError(f"Field 'server.{name}' must be a positive integer, got {getattr(cfg, name)!r}.")
        return cfg


class StatusError(Exception):
    """A failure the edge itself detects (auth, loading, deadline, unknown id), with its gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        super().__init__(message)


def status_for(exc: Exception, rpc: str) -> tuple[grpc.StatusCode, str]:
    """The single place where library errors become gRPC statuses; nothing a client sends can crash the server."""
    if isinstance(exc, StatusError):
        return exc.code, str(exc)
    if isinstance(exc, (InvalidRequest, ImageError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, Unsupported):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    log.error("internal error in %s", rpc, exc_info=exc)  # last line of defence, logged with its traceback
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


class Metrics:
    """Prometheus metrics for one server: per-RPC counts and latency, per-stage latency, index sizes, WAL lag."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vitrine_rpc_requests", "RPCs by method and status code.", ["rpc", "code"], registry=self.registry)
        self.latency = Histogram("vitrine_rpc_latency_seconds", "RPC latency by method.", ["rpc"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.stages = Histogram("vitrine_stage_latency_seconds", "Search pipeline stage latency.", ["stage"],
                                buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._stats: Callable[[], dict[str, float]] | None = None
        self.registry.register(self)

    def watch(self, stats: Callable[[], dict[str, float]]) -> None:
        """Exports `stats()` (index sizes, WAL records/bytes/lag) as gauges at every scrape."""
        self._stats = stats

    def collect(self):  # noqa: ANN201 - the prometheus_client collector protocol
        if self._stats is None:
            return
        for name, value in self._stats().items():
            yield GaugeMetricFamily(f"vitrine_{name}", f"Live index {name.replace('_', ' ')}.", value=float(value))

    def observe(self, rpc: str, code: grpc.StatusCode, seconds: float) -> None:
        self.requests.labels(rpc, code.name).inc()
        self.latency.labels(rpc).observe(seconds)

    def serve_http(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)


def _abort_on_error(fn: Callable) -> Callable:
    """Maps exceptions through status_for and records each call's status and latency."""

    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        t0, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            return fn(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            code, message = status_for(exc, fn.__name__)
        finally:
            if self.metrics is not None:
                self.metrics.observe(fn.__name__, code, time.perf_counter() - t0)
        context.abort(code, message)

    wrapper.__name__ = fn.__name__
    return wrapper


def check_deadline(context: grpc.ServicerContext) -> None:
    """Refuses work whose client has already given up."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the server started the request.")


def request_from_proto(req: search_pb2.SearchRequest) -> tuple[SearchRequest, list[str]]:
    fields = list(req.fields)
    for f in fields:
        if f not in STORED_FIELDS and f != "*":
            raise InvalidRequest("fields", f"unknown stored field {f!r}; fields are {', '.join(STORED_FIELDS)} or '*'.")
    if req.k < 0:
        raise InvalidRequest("k", f"must be positive, got {req.k}.")
    if req.fusion not in (search_pb2.FUSION_UNSPECIFIED, *_FUSION):
        raise InvalidRequest("fusion", f"unknown fusion method {req.fusion}.")
    has_price = req.HasField("price")
    return SearchRequest(
        text=req.text,
        image=bytes(req.image),
        filters=dict(req.filters),
        price_min=req.price.min if has_price and req.price.HasField("min") else None,
        price_max=req.price.max if has_price and req.price.HasField("max") else None,
        k=req.k,
        offset=req.offset,
        exclude_ids=list(req.exclude_ids),
        fusion=_FUSION.get(req.fusion),
        weights=dict(req.weights),
        sources=list(req.sources),
        explain=req.explain,
        constraint=req.constraint,
        composed_text_weight=req.composed_text_weight if req.HasField("composed_text_weight") else None,
        stages=req.stages,
        rerank_depth=req.rerank_depth if req.HasField("rerank_depth") else None,
        log_features=req.log_features,
    ), fields


_LATER_STAGES = ("fused", "cross", "ltr")


def explain_hit(hit: Any, method: FusionMethod, weights: dict[str, float], contributions: dict[str, float] | None = None) -> str:
    """One line a person can read: first-stage sources and fusion, then the cross-encoder and ranker, if they ran."""
    by = hit.scores_by_source
    parts = [f"{s}: score={h.score:.4f} rank={h.rank} weight={weights.get(s, 1.0):g}"
             for s, h in sorted(by.items()) if s not in _LATER_STAGES]
    fused = by["fused"].score if "fused" in by else hit.score
    out = f"fused={fused:.4f} by {method.value} of [" + "; ".join(parts) + "]"
    if "cross" in by:
        out += f"; cross-encoder={by['cross'].score:.4f} (rank {by['cross'].rank})"
    if "ltr" in by:
        out += f"; ranker={by['ltr'].score:.4f} (rank {by['ltr'].rank})"
        if contributions:
            top = sorted(((k, v) for k, v in contributions.items() if k != "bias"), key=lambda kv: -abs(kv[1]))[:5]
            out += " = bias {:+.3f} ".format(contributions.get("bias", 0.0)) + " ".join(f"{k} {v:+.3f}" for k, v in top) + " ..."
    return out


class SearchServicer(search_pb2_grpc.SearchServicer):
    """Thin: proto -> SearchRequest -> Searcher -> proto. The searcher can be swapped atomically."""

    def __init__(self, searcher: Searcher | None, lock: ReadWriteLock | None = None, metrics: Metrics | None = None,
                 query_log: QueryLog | None = None) -> None:
        self._searcher = searcher
        self._lock = threading.Lock()
        # With live updates, searches share this lock with writes: FAISS add/remove is not safe beside a search.
        self.read_lock = lock
        self.metrics = metrics
        self.query_log = query_log or QueryLog()

    @property
    def searcher(self) -> Searcher:
        if self._searcher is None:
            raise StatusError(grpc.StatusCode.UNAVAILABLE, "the server is still loading its bundle; retry shortly.")
        return self._searcher

    def _reading(self) -> contextlib.AbstractContextManager:
        return self.read_lock.read() if self.read_lock is not None else contextlib.nullcontext()

    def swap(self, searcher: Searcher) -> Searcher:
        with self._lock:
            old, self._searcher = self._searcher, searcher
        return old

    @_abort_on_error
    def Search(self, request: search_pb2.SearchRequest, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        searcher = self.searcher  # one bundle serves the whole request, even during a swap
        req, fields = request_from_proto(request)
        check_deadline(context)
        log_features = self.query_log.wants_features(req.log_features)
        if log_features != req.log_features:
            req = replace(req, log_features=log_features)
        with self._reading():
            result = searcher.search(req)
            response = self._response(searcher, req, result, fields)
        response.request_id = self.query_log.new_request_id()
        query = {"text": req.text, "mode": result.mode, **({"filters": dict(req.filters)} if req.filters else {})}
        if log_features and result.features:
            self.query_log.features.write(feature_record(response.request_id, query, result.bundle_version,
                                                         dict(response.model_versions), [h.id for h in result.hits],
                                                         result.features))
        self.query_log.remember(response.request_id, query, [h.id for h in result.hits], request.session, req.image)
        if self.metrics is not None:
            for stage, ms in result.timings_ms.items():
                self.metrics.stages.labels(stage).observe(ms / 1e3)
        return response

    @_abort_on_error
    def Feedback(self, request: search_pb2.FeedbackRequest, context: grpc.ServicerContext) -> search_pb2.FeedbackResponse:
        if not request.request_id:
            raise InvalidRequest("request_id", "is empty; quote the request_id of the SearchResponse.")
        try:
            logged = self.query_log.feedback(request.request_id, list(request.clicked), dict(request.dwell_ms))
        except KeyError:
            raise StatusError(grpc.StatusCode.NOT_FOUND, f"request_id {request.request_id!r} is unknown or too old to log.") from None
        return search_pb2.FeedbackResponse(logged=logged)

    @_abort_on_error
    def Info(self, request: search_pb2.InfoRequest, context: grpc.ServicerContext) -> search_pb2.InfoResponse:
        searcher = self.searcher
        # The served stages join the manifest so `vitrine eval --ablate` can measure each one.
        stages = searcher.available_stages()
        manifest = {**searcher.bundle.manifest, "served_models": model_versions(searcher),
                    **({"stages": {"stages": stages}} if len(stages) > 1 else {})}
        return search_pb2.InfoResponse(bundle_version=searcher.bundle.version, manifest_json=json.dumps(manifest))

    def _response(self, searcher: Searcher, req: SearchRequest, result: SearchResult, fields: list[str]) -> search_pb2.SearchResponse:
        method = req.fusion or searcher.config.fusion
        weights = {**searcher.config.weights, **req.weights}
        resp = search_pb2.SearchResponse(
            total_candidates=result.total_candidates,
            bundle_version=result.bundle_version,
            took_ms=result.timings_ms.get("total", 0.0),
            stages=result.stages,
            stage_ms=result.timings_ms,
        )
        resp.model_versions.update(model_versions(searcher))
        docstore = searcher.bundle.docstore
        for hit in result.hits:
            h = resp.hits.add(id=hit.id, score=hit.score)
            for source, sh in sorted(hit.scores_by_source.items()):
                h.sources.add(source=source, score=sh.score, rank=sh.rank)
            if fields:
                item = docstore.get(hit.id)
                stored = item.to_dict() if item is not None else {"id": hit.id}
                if "*" not in fields:
                    stored = {f: stored[f] for f in fields if f in stored}
                h.fields_json = json.dumps(stored, ensure_ascii=False)
            if req.explain:
                contrib = result.contributions.get(hit.id)
                h.explanation = explain_hit(hit, method, weights, contrib)
                if contrib:
                    h.contributions.update(contrib)
                x = result.features.get(hit.id)
                if x is not None:
                    h.features.update({n: float(v) for n, v in zip(FEATURES, x) if v == v})  # NaN = absent
        return resp


def model_versions(searcher: Searcher) -> dict[str, str]:
    """Every model that can touch a response, by role: bundle encoders, then the second stage's."""
    out = {name: str(meta.get("version") or meta.get("name", "")) for name, meta in searcher.bundle.manifest.get("models", {}).items()}
    if searcher.reranker is not None:
        out["reranker"] = searcher.reranker.version
    if searcher.ranker is not None:
        out["ranker"] = searcher.ranker.version
    return out


def create_server(searcher: Searcher | None, address: str = "127.0.0.1:0", config: ServerConfig = ServerConfig(), *,
                  live: LiveIndex | None = None, catalog: Any = None, metrics: Metrics | None = None,
                  query_log: QueryLog | None = None, loader: Any = None, pointer: str | None = None,
                  ) -> tuple[grpc.Server, int, SearchServicer, health.HealthServicer]:
    """Builds and starts a server with the Search and Catalog services, health and reflection.

    Returns it, the bound port, the search servicer (its `.catalog` is the Catalog servicer) and health.
    With `searcher=None` the server answers UNAVAILABLE and health says NOT_SERVING until `mark_serving`.
    `catalog` is a server.catalog_service.CatalogConfig; writes need `live`. With a `loader` (see server/admin.py)
    the Admin service can hot-swap bundles; its Reloader is `servicer.reloader`.
    """
    from server.catalog_service import CatalogConfig, CatalogServicer

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="vitrine-rpc"),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    servicer = SearchServicer(searcher, live.lock if live is not None else None, metrics, query_log)
    if metrics is not None and live is not None:
        metrics.watch(live.stats)
    search_pb2_grpc.add_SearchServicer_to_server(servicer, server)
    servicer.catalog = CatalogServicer(live, catalog or CatalogConfig(), metrics)
    search_pb2_grpc.add_CatalogServicer_to_server(servicer.catalog, server)
    servicer.reloader = None
    if loader is not None:
        from server.admin import AdminServicer, Reloader

        servicer.reloader = Reloader(servicer, loader, pointer, live_writes=live is not None)
        search_pb2_grpc.add_AdminServicer_to_server(AdminServicer(servicer.reloader, servicer.catalog.authorize, metrics), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*SERVICE_NAMES, search_pb2.DESCRIPTOR.services_by_name["Search"].full_name, health.SERVICE_NAME,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(tuple(dict.fromkeys(names)), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    if searcher is not None:
        mark_serving(health_servicer)
    return server, port, servicer, health_servicer


def attach(servicer: SearchServicer, health_servicer: health.HealthServicer, searcher: Searcher,
           live: LiveIndex | None = None) -> None:
    """Finishes a server started with `searcher=None` once the bundle has loaded, then reports SERVING."""
    if live is not None:
        servicer.read_lock = live.lock
        servicer.catalog.live = live
        if servicer.reloader is not None:
            servicer.reloader.live_writes = True
        if servicer.metrics is not None:
            servicer.metrics.watch(live.stats)
    servicer.swap(searcher)
    mark_serving(health_servicer)


def mark_serving(health_servicer: health.HealthServicer) -> None:
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
