"""Tenants on one server: each shop's serving state, logs, limits and experiment, and the router that picks one per RPC.

Every RPC names its tenant in the `x-vitrine-tenant` metadata (one choice for every service, streaming Upsert
included, without a field in each message). A server started with one bundle (`vitrine serve --bundle`) has the
single tenant `default`, which requests without the header reach. Tenant management RPCs (Admin CreateTenant,
ListTenants, DropTenant) name the tenant in the request instead, as the thing they act on.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from vitrine.server.client import TENANT_HEADER
from vitrine.server.query_log import QueryLog
from vitrine.server.state import ServingState
from vitrine.server.status import StatusError
from vitrine.serving.config import ExperimentConfig, QuotaConfig

DEFAULT_TENANT = "default"


class TokenBucket:
    """`rate` tokens per second up to `size`; `take(n)` is False when the bucket cannot pay now (nothing waits)."""

    def __init__(self, rate: float, size: float) -> None:
        self.rate, self.size = rate, size
        self.tokens = size
        self.t = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: float = 1.0) -> bool:
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.size, self.tokens + (now - self.t) * self.rate)
            self.t = now
            if self.tokens < n:
                return False
            self.tokens -= n
            return True


class Quota:
    """One tenant's limits, enforced before any work: over them, RESOURCE_EXHAUSTED with the limit named."""

    def __init__(self, tenant: str, config: QuotaConfig = QuotaConfig()) -> None:
        self.tenant, self.config = tenant, config
        self.requests = TokenBucket(config.qps, config.burst or max(1.0, config.qps)) if config.qps else None
        # The bytes bucket holds at least one largest message, so no single request is refused forever.
        self.bytes = TokenBucket(config.bytes_per_s, max(config.bytes_per_s, 64 << 20)) if config.bytes_per_s else None
        self.in_flight = 0
        self.rejected = 0
        self._lock = threading.Lock()

    def admit(self, nbytes: int = 0) -> None:
        if self.requests is not None and not self.requests.take():
            self._reject(f"tenant {self.tenant!r} is over its quota of {self.config.qps:g} requests/s; retry later.")
        if self.bytes is not None and nbytes and not self.bytes.take(nbytes):
            self._reject(f"tenant {self.tenant!r} is over its quota of {self.config.bytes_per_s:g} request bytes/s; "
                         f"retry later.")

    def check_items(self, items_now: int, new_items: int) -> None:
        if self.config.max_items and items_now + new_items > self.config.max_items:
            self._reject(f"tenant {self.tenant!r} holds {items_now} items; its quota is {self.config.max_items}.")

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        limit = self.config.max_in_flight
        with self._lock:
            if limit and self.in_flight >= limit:
                self.rejected += 1
                raise StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"tenant {self.tenant!r} has {self.in_flight} requests in flight, its quota; retry later.")
            self.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    def _reject(self, message: str) -> None:
        with self._lock:
            self.rejected += 1
        raise StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


@dataclass
class Tenant:
    """What one shop is served from. With an experiment, the state's `Served` holds its B arm."""

    name: str
    state: ServingState
    query_log: QueryLog = field(default_factory=QueryLog)
    catalog: Any = None                          # CatalogConfig: write limits (and the legacy shared write token)
    quota: Quota | None = None
    reloader: Any = None                         # Reloader, when bundles can be hot-swapped
    experiment: ExperimentConfig | None = None
    experiment_log: Any = None                   # JsonlAppender of Feedback credited to arms/teams
    dir: Path | None = None

    def __post_init__(self) -> None:
        if self.quota is None:
            self.quota = Quota(self.name)
        self.active = 0                    # RPCs holding a lease on this tenant (drop waits for them)
        self.streams = 0                   # open Upsert streams of this tenant
        self._idle = threading.Condition()

    @contextlib.contextmanager
    def lease(self) -> Iterator[Tenant]:
        with self._idle:
            self.active += 1
        try:
            yield self
        finally:
            with self._idle:
                self.active -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no RPC holds a lease (True) or `timeout_s` passes (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: self.active == 0, timeout_s)

    def close(self) -> None:
        """Stops the live index (its WAL is already durable) and closes logs; the searcher is retired by the caller."""
        if self.state.live is not None:
            self.state.live.close()
        self.query_log.close()
        if self.experiment_log is not None:
            self.experiment_log.close()


class Tenants:
    """The tenants a server holds, by name; thread-safe, changed by the Admin RPCs while others serve."""

    def __init__(self, tenants: list[Tenant] = ()) -> None:
        self._by_name: dict[str, Tenant] = {t.name: t for t in tenants}
        self._lock = threading.Lock()

    def add(self, tenant: Tenant) -> None:
        with self._lock:
            if tenant.name in self._by_name:
                raise FileExistsError(f"name: tenant {tenant.name!r} already exists.")
            self._by_name[tenant.name] = tenant

    def remove(self, name: str) -> Tenant:
        with self._lock:
            tenant = self._by_name.pop(name, None)
        if tenant is None:
            raise StatusError(grpc.StatusCode.NOT_FOUND, f"name: no tenant {name!r}.")
        return tenant

    def get(self, name: str) -> Tenant | None:
        return self._by_name.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Tenant]:
        return iter(sorted(self._by_name.values(), key=lambda t: t.name))

    def __len__(self) -> int:
        return len(self._by_name)

    @contextlib.contextmanager
    def lease(self, context: grpc.ServicerContext) -> Iterator[Tenant]:
        """The tenant an RPC names, held for the whole RPC: a DropTenant waits for every lease to end."""
        with self.route(context).lease() as tenant:
            yield tenant

    def route(self, context: grpc.ServicerContext) -> Tenant:
        """The tenant an RPC names (authentication already checked the caller may use it); NOT_FOUND if unknown."""
        name = requested_tenant(context)
        if not name:
            if DEFAULT_TENANT in self._by_name:
                return self._by_name[DEFAULT_TENANT]
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"metadata {TENANT_HEADER}: this server holds several tenants; name one.")
        tenant = self._by_name.get(name)
        if tenant is None:
            raise StatusError(grpc.StatusCode.NOT_FOUND, f"metadata {TENANT_HEADER}: no tenant {name!r} on this server.")
        return tenant


def single_value(metadata: object, key: str) -> str:
    """The one value of metadata `key` ("" when absent). Sent twice is refused: a key check and the routing must
    never read different copies of the same header."""
    values = [v for k, v in (metadata or ()) if k == key]
    if len(values) > 1:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"metadata {key}: sent {len(values)} times; send it once.")
    return values[0] if values else ""


def requested_tenant(context: grpc.ServicerContext) -> str:
    return single_value(context.invocation_metadata(), TENANT_HEADER)

