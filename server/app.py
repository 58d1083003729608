"""`create_server`: the Search, Catalog and Admin services for one or many tenants, health and reflection on one port."""
from __future__ import annotations

from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vitrine.indexer.live import LiveIndex
from vitrine.proto import search_pb2, search_pb2_grpc
from vitrine.server.admin import AdminServicer, Reloader, TenantManager
from vitrine.server.auth import AuthInterceptor, KeyStore
from vitrine.server.catalog_service import CatalogServicer
from vitrine.server.query_log import QueryLog
from vitrine.server.search_service import SearchServicer
from vitrine.server.state import ServingState
from vitrine.server.status import SERVICE_NAMES, Metrics
from vitrine.server.tenants import DEFAULT_TENANT, Tenant, Tenants
from vitrine.serving.assemble import Served
from vitrine.serving.config import CatalogConfig, ServerConfig
from vitrine.serving.tenant import Loader


@dataclass(frozen=True)
class ServerOptions:
    """How the port serves, whatever tenants it holds: [server] and the server-wide [catalog] limits (max_streams),
    Prometheus metrics, API keys (every RPC then needs a key of its tenant, server/auth.py), TLS credentials, and a
    TenantManager for the Admin RPCs that create and drop tenants (`--tenants DIR`)."""

    config: ServerConfig = ServerConfig()
    catalog: CatalogConfig = CatalogConfig()
    metrics: Metrics | None = None
    keys: KeyStore | None = None
    credentials: grpc.ServerCredentials | None = None
    manager: TenantManager | None = None


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
    catalog: CatalogServicer | None = None   # the servicers the JSON-over-HTTP app calls too (server/http.py)
    keys: KeyStore | None = None

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

    def attach(self, served: Served, live: LiveIndex | None = None) -> None:
        """Completes the default tenant of a server started while its bundle loaded, then reports SERVING."""
        self.state.attach(served, live)
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


def single(served: Served | None = None, live: LiveIndex | None = None, *, query_log: QueryLog | None = None,
           catalog: CatalogConfig = CatalogConfig(), loader: Loader | None = None, pointer: str | None = None) -> Tenants:
    """The one tenant, "default", of a server started with one bundle: `served` (None while it loads, completed by
    `VitrineServer.attach`); catalog writes need `live`; with a `loader` the Admin service can hot-swap bundles
    (server/admin.py), following `pointer` (a `current` symlink) when a reload names none."""
    tenant = Tenant(DEFAULT_TENANT, ServingState(served, live), query_log or QueryLog(), catalog)
    if loader is not None:
        tenant.reloader = Reloader(tenant.state, loader, pointer)
    return Tenants([tenant])


def create_server(tenants: Tenants, address: str = "127.0.0.1:0", options: ServerOptions = ServerOptions()
                  ) -> VitrineServer:
    """Builds and starts a server for `tenants` (`single(...)` for one bundle); tests bind port 0 and read `.port`.

    A tenant whose state is still empty (its bundle loading) answers UNAVAILABLE, and health says NOT_SERVING until
    `VitrineServer.attach` completes it: `vitrine serve` binds first, then loads.
    """
    config, metrics, keys = options.config, options.metrics, options.keys
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
    default = tenants.get(DEFAULT_TENANT) if options.manager is None else None   # a one-bundle server's tenant
    if metrics is not None and default is not None and default.state.live is not None:
        metrics.watch(default.state.live.stats)
    search = SearchServicer(tenants, metrics)
    search_pb2_grpc.add_SearchServicer_to_server(search, server)
    catalog = CatalogServicer(tenants, metrics, options.catalog.max_streams)
    search_pb2_grpc.add_CatalogServicer_to_server(catalog, server)
    search_pb2_grpc.add_AdminServicer_to_server(AdminServicer(tenants, options.manager, metrics), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*SERVICE_NAMES, search_pb2.DESCRIPTOR.services_by_name["Search"].full_name, health.SERVICE_NAME,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(tuple(dict.fromkeys(names)), server)
    credentials = options.credentials
    port = server.add_secure_port(address, credentials) if credentials is not None else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    out = VitrineServer(server, port, tenants, health_servicer, search, metrics, options.manager, catalog, keys)
    out.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    if all(t.state.loaded for t in tenants):
        out.set_health(health_pb2.HealthCheckResponse.SERVING)
    return out
