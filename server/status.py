"""The gRPC edge's shared pieces: the one map from library errors to status codes, the RPC wrapper, and metrics.

Every servicer imports this module and nothing else of server/, so the servicers never import each other.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from vitrine.encoders.batching import DeadlineExceeded, QueueFull
from vitrine.encoders.images import ImageError
from vitrine.indexer.live import Overloaded
from vitrine.ranking.pipeline import InvalidRequest, Unsupported

log = logging.getLogger("vitrine.server")

SERVICE_NAMES = ("vitrine.v1.Search", "vitrine.v1.Catalog", "vitrine.v1.Admin")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
    if isinstance(exc, (Overloaded, QueueFull)):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
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

    def refused(self, method: str, code: grpc.StatusCode) -> None:
        """An RPC the key check refused before any servicer ran."""
        self.requests.labels(method.rsplit("/", 1)[-1], code.name).inc()

    def serve_http(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)


def abort_on_error(fn: Callable) -> Callable:
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
