"""The gRPC edge: turns protos into library dataclasses and back, and maps domain errors to status codes in one place."""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from encoders.images import ImageError
from proto.vitrine.v1 import search_pb2, search_pb2_grpc
from ranking.fusion import FusionMethod
from ranking.pipeline import InvalidRequest, Searcher, SearchRequest, SearchResult, Unsupported

log = logging.getLogger("vitrine.server")

STORED_FIELDS = ("id", "title", "description", "category", "attributes", "price", "image")
_FUSION = {search_pb2.FUSION_RRF: FusionMethod.RRF, search_pb2.FUSION_WEIGHTED: FusionMethod.WEIGHTED}
SERVICE_NAMES = ("vitrine.v1.Search",)


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


def _abort_on_error(fn: Callable) -> Callable:
    """The single place where library errors become gRPC statuses; nothing a client sends can crash the server."""

    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except (InvalidRequest, ImageError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Unsupported as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except Exception as exc:  # noqa: BLE001 - last line of defence, logged with its traceback
            log.exception("internal error in %s", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    wrapper.__name__ = fn.__name__
    return wrapper


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
    ), fields


def explain_hit(hit: Any, method: FusionMethod, weights: dict[str, float]) -> str:
    parts = [f"{s}: score={h.score:.4f} rank={h.rank} weight={weights.get(s, 1.0):g}" for s, h in sorted(hit.scores_by_source.items())]
    return f"fused={hit.score:.4f} by {method.value} of [" + "; ".join(parts) + "]"


class SearchServicer(search_pb2_grpc.SearchServicer):
    """Thin: proto -> SearchRequest -> Searcher -> proto. The searcher can be swapped atomically."""

    def __init__(self, searcher: Searcher) -> None:
        self._searcher = searcher
        self._lock = threading.Lock()

    @property
    def searcher(self) -> Searcher:
        return self._searcher

    def swap(self, searcher: Searcher) -> Searcher:
        with self._lock:
            old, self._searcher = self._searcher, searcher
        return old

    @_abort_on_error
    def Search(self, request: search_pb2.SearchRequest, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        searcher = self._searcher  # one bundle serves the whole request, even during a swap
        req, fields = request_from_proto(request)
        result = searcher.search(req)
        return self._response(searcher, req, result, fields)

    @_abort_on_error
    def Info(self, request: search_pb2.InfoRequest, context: grpc.ServicerContext) -> search_pb2.InfoResponse:
        bundle = self._searcher.bundle
        return search_pb2.InfoResponse(bundle_version=bundle.version, manifest_json=json.dumps(bundle.manifest))

    def _response(self, searcher: Searcher, req: SearchRequest, result: SearchResult, fields: list[str]) -> search_pb2.SearchResponse:
        method = req.fusion or searcher.config.fusion
        weights = {**searcher.config.weights, **req.weights}
        resp = search_pb2.SearchResponse(
            total_candidates=result.total_candidates,
            bundle_version=result.bundle_version,
            took_ms=result.timings_ms.get("total", 0.0),
        )
        for name, meta in searcher.bundle.manifest.get("models", {}).items():
            resp.model_versions[name] = str(meta.get("version") or meta.get("name", ""))
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
                h.explanation = explain_hit(hit, method, weights)
        return resp


def create_server(searcher: Searcher, address: str = "127.0.0.1:0", config: ServerConfig = ServerConfig()
                  ) -> tuple[grpc.Server, int, SearchServicer, health.HealthServicer]:
    """Builds and starts a server with the Search service, health and reflection; returns it and the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="vitrine-rpc"),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    servicer = SearchServicer(searcher)
    search_pb2_grpc.add_SearchServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*SERVICE_NAMES, search_pb2.DESCRIPTOR.services_by_name["Search"].full_name, health.SERVICE_NAME,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(tuple(dict.fromkeys(names)), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    server.start()
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, servicer, health_servicer
