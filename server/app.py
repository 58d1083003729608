"""`create_server`: the Search, Catalog and (with a loader) Admin services, health and reflection on one port."""
from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vitrine.encoders.config import check_positive_ints, config_from_dict
from vitrine.indexer.live import LiveIndex
from vitrine.proto import search_pb2, search_pb2_grpc
from vitrine.ranking.pipeline import Searcher
from vitrine.server.admin import AdminServicer, Loader, Reloader
from vitrine.server.catalog_service import CatalogConfig, CatalogServicer
from vitrine.server.query_log import QueryLog
from vitrine.server.search_service import SearchServicer
from vitrine.server.state import ServingState
from vitrine.server.status import SERVICE_NAMES, Metrics


@dataclass(frozen=True)
class ServerConfig:
    """[server] section: gRPC worker threads, admission limit, message size and the drain time on shutdown."""

    max_workers: int = 8
    # Requests beyond this many in flight are refused with RESOURCE_EXHAUSTED instead of queueing forever.
    max_concurrent_rpcs: int = 64
    max_message_bytes: int = 12 * 1024 * 1024
    grace_s: float = 5.0

    @classmethod
    def from_dict(cls, d: dict) -> ServerConfig:
        cfg = config_from_dict(cls, d, "server")
        check_positive_ints(cfg, "server", ("max_workers", "max_concurrent_rpcs", "max_message_bytes"))
        return cfg


@dataclass(frozen=True)
class VitrineServer:
    """A started server and what a caller needs of it: the bound port, the serving state, health, the reloader."""

    server: grpc.Server
    port: int
    state: ServingState
    health: health.HealthServicer
    search: SearchServicer
    reloader: Reloader | None
    metrics: Metrics | None

    def attach(self, searcher: Searcher, live: LiveIndex | None = None) -> None:
        """Finishes a server started with `searcher=None` once the bundle has loaded, then reports SERVING."""
        self.state.attach(searcher, live)
        if self.metrics is not None and live is not None:
            self.metrics.watch(live.stats)
        self.set_health(health_pb2.HealthCheckResponse.SERVING)

    def set_health(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, status)

    def stop(self, grace_s: float | None = None) -> None:
        """Stops taking RPCs, lets those in flight finish for `grace_s` seconds, and waits."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()


def create_server(searcher: Searcher | None, address: str = "127.0.0.1:0", config: ServerConfig = ServerConfig(), *,
                  live: LiveIndex | None = None, catalog: CatalogConfig | None = None, metrics: Metrics | None = None,
                  query_log: QueryLog | None = None, loader: Loader | None = None, pointer: str | None = None,
                  ) -> VitrineServer:
    """Builds and starts a server; tests bind port 0 and read `.port`.

    With `searcher=None` the server answers UNAVAILABLE and health says NOT_SERVING until `attach`. Catalog
    writes need `live`. With a `loader` the Admin service can hot-swap bundles (see server/admin.py).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="vitrine-rpc"),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    state = ServingState(searcher, live)
    if metrics is not None and live is not None:
        metrics.watch(live.stats)
    search = SearchServicer(state, metrics, query_log)
    search_pb2_grpc.add_SearchServicer_to_server(search, server)
    catalog_servicer = CatalogServicer(state, catalog or CatalogConfig(), metrics)
    search_pb2_grpc.add_CatalogServicer_to_server(catalog_servicer, server)
    reloader = None
    if loader is not None:
        reloader = Reloader(state, loader, pointer)
        search_pb2_grpc.add_AdminServicer_to_server(AdminServicer(reloader, catalog_servicer.authorize, metrics), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*SERVICE_NAMES, search_pb2.DESCRIPTOR.services_by_name["Search"].full_name, health.SERVICE_NAME,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(tuple(dict.fromkeys(names)), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    out = VitrineServer(server, port, state, health_servicer, search, reloader, metrics)
    out.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    if searcher is not None:
        out.set_health(health_pb2.HealthCheckResponse.SERVING)
    return out
