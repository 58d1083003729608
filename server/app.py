"""`create_server`: the Search, Catalog and Admin services for one or many tenants, health and reflection on one port."""
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
from vitrine.server.admin import AdminServicer, Loader, Reloader, TenantManager
from vitrine.server.auth import AuthInterceptor, KeyStore
from vitrine.server.catalog_service import CatalogConfig, CatalogServicer
from vitrine.server.query_log import QueryLog
from vitrine.server.search_service import SearchServicer
from vitrine.server.state import ServingState
from vitrine.server.status import SERVICE_NAMES, Metrics
from vitrine.server.tenants import DEFAULT_TENANT, Tenant, Tenants, single


@dataclass(frozen=True)
class ServerConfig:
    """[server] section: gRPC worker threads, admission limit, message size and the drain time on shutdown."""

    max_workers: int = 8
    # Requests beyond this many in flight are refused with RESOURCE_EXHAUSTED instead of queueing forever.
    max_concurrent_rpcs: int = 64
    max_message_bytes: int = 12 * 1024 * 1024
    grace_s: float = 5.0
    # Clients re-resolve DNS only when a connection ends: closing each connection after this long (gracefully)
    # lets round-robin clients of a headless Service find replicas a scale-up added. 0 = never.
    max_connection_age_s: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> ServerConfig:
        cfg = config_from_dict(cls, d, "server")
        check_positive_ints(cfg, "server", ("max_workers", "max_concurrent_rpcs", "max_message_bytes"))
        return cfg


@dataclass(frozen=True)
class VitrineServer:
    """A started server and what a caller needs of it: the bound port, the tenants, health."""

    server: grpc.Server
    port: int
    tenants: Tenants
    health: health.HealthServicer
    search: SearchServicer
    metrics: Metrics | None
    manager: TenantManager | None = None

    @property
    def default(self) -> Tenant:
        tenant = self.tenants.get(DEFAULT_TENANT)
        if tenant is None:
            raise AttributeError("this server has no 'default' tenant (it serves --tenants DIR).")
        return tenant

    @property
    def state(self) -> ServingState:
        """The single tenant's state, on a server started with one bundle."""
        return self.default.state

    @property
    def reloader(self) -> Reloader | None:
        return self.default.reloader

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
                  tenants: Tenants | None = None, manager: TenantManager | None = None, keys: KeyStore | None = None,
                  credentials: grpc.ServerCredentials | None = None) -> VitrineServer:
    """Builds and starts a server; tests bind port 0 and read `.port`.

    One bundle: `searcher` (or None: the server answers UNAVAILABLE and health says NOT_SERVING until `attach`) is
    the tenant "default"; catalog writes need `live`; with a `loader` the Admin service can hot-swap bundles (see
    server/admin.py). Many: `tenants` (searcher None), and a `manager` to create and drop them. With `keys`, every
    RPC needs an API key of its tenant (server/auth.py); with `credentials` the port speaks TLS.
    """
    if tenants is None:
        tenant = single(searcher, live, query_log, catalog or CatalogConfig())
        if loader is not None:
            tenant.reloader = Reloader(tenant.state, loader, pointer)
        tenants = Tenants([tenant])
    elif searcher is not None:
        raise ValueError("give either one searcher or tenants, not both.")
    interceptors = [AuthInterceptor(keys, metrics.refused if metrics is not None else None)] if keys is not None else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="vitrine-rpc"),
        interceptors=interceptors,
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
            *([("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
               ("grpc.max_connection_age_grace_ms", int(config.grace_s * 1000))] if config.max_connection_age_s > 0 else []),
        ],
    )
    if metrics is not None and live is not None:
        metrics.watch(live.stats)
    search = SearchServicer(tenants, metrics)
    search_pb2_grpc.add_SearchServicer_to_server(search, server)
    search_pb2_grpc.add_CatalogServicer_to_server(CatalogServicer(tenants, metrics, (catalog or CatalogConfig()).max_streams), server)
    search_pb2_grpc.add_AdminServicer_to_server(AdminServicer(tenants, manager, metrics), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*SERVICE_NAMES, search_pb2.DESCRIPTOR.services_by_name["Search"].full_name, health.SERVICE_NAME,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(tuple(dict.fromkeys(names)), server)
    port = server.add_secure_port(address, credentials) if credentials is not None else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    out = VitrineServer(server, port, tenants, health_servicer, search, metrics, manager)
    out.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    if all(t.state.loaded for t in tenants):
        out.set_health(health_pb2.HealthCheckResponse.SERVING)
    return out
