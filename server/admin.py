"""Hot swap: load a new bundle (and second-stage models) beside the serving one, then switch atomically.

A search holds the searcher it started with to the end, so switching never fails or stalls a query; the old
bundle is closed only after `close_after_s`, long past any search's deadline. Reloads come from the Admin RPC
or from a watcher that follows a `current` pointer (a symlink, as the registry writes it).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import grpc

from vitrine.proto import search_pb2, search_pb2_grpc
from vitrine.ranking.pipeline import InvalidRequest
from vitrine.server.auth import check_token
from vitrine.server.query_log import JsonlAppender, QueryLog
from vitrine.server.state import ServingState, freeze_heap, model_versions
from vitrine.server.status import Metrics, StatusError, abort_on_error
from vitrine.server.tenants import Quota, Tenant, Tenants
from vitrine.serving.assemble import Served
from vitrine.serving.pool import ModelPool
from vitrine.serving.tenancy import TenantSpec, check_name, list_tenants, write_spec
from vitrine.serving.tenant import Loader, open_tenant

T = TypeVar("T")

log = logging.getLogger("vitrine.admin")


def retire_later(served: Served, after_s: float) -> None:
    """Retires a searcher once every search that started on it is long finished."""
    timer = threading.Timer(after_s, served.retire)
    timer.daemon = True
    timer.start()


def run_niced(work: Callable[[], T], nice: int = 10, name: str = "vitrine-bundle-load") -> T:
    """Runs `work` in a thread at a lower CPU priority (loading competes less with serving); re-raises its error."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            # Linux applies a thread's nice value to that thread (and threads it starts); elsewhere skip.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except (AttributeError, OSError):
            pass
        try:
            out["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]  # type: ignore[return-value]


class Reloader:
    """Serialises reloads and retires old searchers; shared by the Admin RPC and the pointer watcher."""

    def __init__(self, state: ServingState, loader: Loader, pointer: str | None = None, close_after_s: float = 60.0) -> None:
        self.state = state
        self.loader = loader
        self.pointer = pointer
        self.close_after_s = close_after_s
        self._lock = threading.Lock()
        self.load_nice = 10

    def reload(self, bundle: str = "", reranker: str = "", ranker: str = "") -> tuple[Served, Served | None, float]:
        """Loads and switches; returns (new, old, load seconds). Raises ValueError/FileNotFoundError on a bad path."""
        if self.state.live is not None:
            # Acknowledged writes live in the serving bundle's WAL; a swap would drop them from search.
            raise ValueError("bundle: this server accepts live catalog writes; hot swap needs `vitrine serve --read-only` "
                             "(index the writes into the next bundle instead).")
        target = bundle or self.pointer
        if not target:
            raise ValueError("bundle: give a bundle directory (this server follows no 'current' pointer).")
        path = Path(target).resolve()
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(f"bundle: {target} is not a Vitrine bundle (no manifest.json).")
        with self._lock:
            t0 = time.perf_counter()
            new = run_niced(lambda: self.loader(str(path), reranker or None, ranker or None), self.load_nice)
            old = self.state.swap(new)
        seconds = time.perf_counter() - t0
        freeze_heap()
        log.info("switched to bundle %s (%s) in %.1f s", new.bundle.version, path, seconds)
        if old is not None and old.bundle is not new.bundle:
            retire_later(old, self.close_after_s)
        return new, old, seconds

    def watch(self, every_s: float, stop: threading.Event) -> threading.Thread:
        """Polls the pointer and reloads when it names another directory; a failed load keeps the old bundle."""
        if not self.pointer:
            raise ValueError("watching needs a 'current' pointer to follow.")

        def loop() -> None:
            seen = Path(self.pointer).resolve()
            while not stop.wait(every_s):
                now = Path(self.pointer).resolve()
                if now == seen:
                    continue
                try:
                    self.reload()
                    seen = now
                except Exception:  # noqa: BLE001 - a bad new bundle must not take serving down
                    log.exception("could not switch to %s; still serving the previous bundle", now)
                    seen = now

        thread = threading.Thread(target=loop, name="vitrine-pointer-watch", daemon=True)
        thread.start()
        return thread


def tenant_opener(raw: dict, pool: ModelPool, read_only: bool) -> Callable[[TenantSpec], Tenant]:
    """How a `--tenants` server opens one tenant (serving/tenant.py), wrapped in what the gRPC server runs for it:
    its query log, quota, reloader (when read-only) and experiment log."""

    def open_one(spec: TenantSpec) -> Tenant:
        opened = open_tenant(spec, raw, pool, read_only)
        state = ServingState(opened.served, opened.live)
        reloader = Reloader(state, opened.loader, opened.pointer) if opened.live is None else None
        appender = JsonlAppender(spec.experiment_log) if opened.experiment is not None else None
        return Tenant(spec.name, state, QueryLog(opened.config.logs), opened.config.catalog, Quota(spec.name, opened.quota),
                      reloader, opened.experiment, appender, spec.dir)

    return open_one


class TenantManager:
    """Creates and drops tenants of a `vitrine serve --tenants DIR` server while the others serve."""

    def __init__(self, root: str | Path, tenants: Tenants, open_tenant: Callable[[TenantSpec], Tenant],
                 close_after_s: float = 60.0) -> None:
        self.root = Path(root)
        self.tenants = tenants
        self.open_tenant = open_tenant
        self.close_after_s = close_after_s
        self._lock = threading.Lock()

    def load_all(self) -> list[str]:
        """Opens every tenant under the root (at start); a tenant that fails to load stops the start, named."""
        names = []
        for spec in list_tenants(self.root):
            try:
                self.tenants.add(self.open_tenant(spec))
            except Exception as exc:
                raise ValueError(f"tenant {spec.name} ({spec.dir}): {exc}") from exc
            names.append(spec.name)
        return names

    def create(self, name: str, bundle: str, reranker: str = "", ranker: str = "", read_only: bool = False,
               config_toml: str = "") -> Tenant:
        try:
            check_name(name, "name")
        except ValueError as exc:
            raise InvalidRequest("name", str(exc).removeprefix("name: ")) from None
        src = Path(bundle)
        if not (src / "manifest.json").is_file():
            raise InvalidRequest("bundle", f"{bundle!r} is not a Vitrine bundle on this server (no manifest.json).")
        wal = src / "wal.log"
        if wal.is_file() and wal.stat().st_size > 0:
            # A served bundle's acknowledged writes may still be only in its WAL: a copy would miss them.
            raise InvalidRequest("bundle", f"{bundle!r} has writes in its WAL (a live bundle); copy a Snapshot of it.")
        for field_name, path in (("reranker", reranker), ("ranker", ranker)):
            if path and not Path(path).is_dir():
                raise InvalidRequest(field_name, f"{path!r} is not a directory on this server.")
        with self._lock:
            tenant_dir = self.root / name
            if name in self.tenants or tenant_dir.exists():
                raise StatusError(grpc.StatusCode.ALREADY_EXISTS, f"name: tenant {name!r} already exists.")
            try:
                # The tenant owns a copy: its WAL and snapshots never touch the bundle it was created from.
                shutil.copytree(src.resolve(), tenant_dir / "bundle", ignore=shutil.ignore_patterns("wal.log"))
                write_spec(tenant_dir, reranker=str(Path(reranker).resolve()) if reranker else "",
                           ranker=str(Path(ranker).resolve()) if ranker else "", read_only=read_only,
                           extra_toml=config_toml)
                spec = TenantSpec.read(tenant_dir)
                tenant = run_niced(lambda: self.open_tenant(spec))
            except Exception:
                shutil.rmtree(tenant_dir, ignore_errors=True)
                raise
            self.tenants.add(tenant)
        freeze_heap()
        log.info("created tenant %s from %s", name, src)
        return tenant

    def drop(self, name: str) -> Path:
        """Stops serving `name`; its directory moves to DIR/.dropped/<name>-<time> (nothing acknowledged is deleted)."""
        with self._lock:
            tenant = self.tenants.remove(name)   # no new request reaches it from here on
            if not tenant.wait_idle(self.close_after_s):   # every RPC in flight (searches, writes, streams) ends
                log.warning("dropping tenant %s with %d RPCs still running after %.0f s", name, tenant.active,
                            self.close_after_s)
            reloading = tenant.reloader._lock if tenant.reloader is not None else contextlib.nullcontext()
            with reloading:                      # no hot swap of this tenant is half done
                tenant.close()                   # the live index checkpoints: every acknowledged write is in the bundle
                if tenant.state.loaded:
                    tenant.state.served.retire()
            stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
            archived = self.root / ".dropped" / f"{name}-{stamp}-{uuid.uuid4().hex[:6]}"
            if tenant.dir is not None and tenant.dir.exists():
                archived.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tenant.dir, archived)
        log.info("dropped tenant %s (archived to %s)", name, archived)
        return archived


def confine(tenant: Tenant, field_name: str, path: str) -> None:
    """A tenant of a `--tenants` server reloads only from its own directory (its bundles, registry, models), so no
    tenant key can serve another tenant's files; a single-bundle server (no tenant directory) is not confined."""
    if not path or tenant.dir is None:
        return
    resolved, home = Path(path).resolve(), tenant.dir.resolve()
    if resolved != home and home not in resolved.parents:
        raise StatusError(grpc.StatusCode.PERMISSION_DENIED,
                          f"{field_name}: {path!r} is outside tenant {tenant.name!r}'s directory.")


def tenant_info(tenant: Tenant) -> search_pb2.TenantInfo:
    served = tenant.state.served
    searcher = served.searcher
    items = tenant.state.live.stats().get("items", len(searcher.bundle.docstore)) if tenant.state.live else len(searcher.bundle.docstore)
    return search_pb2.TenantInfo(name=tenant.name, bundle_version=searcher.bundle.version, items=int(items),
                                 model_versions=model_versions(searcher), backends={role: str(b) for role, b in served.backends.items()},
                                 read_only=tenant.state.live is None, quota_json=json.dumps(asdict(tenant.quota.config)),
                                 experiment=tenant.experiment.name if tenant.experiment else "")


class AdminServicer(search_pb2_grpc.AdminServicer):
    """Reload routes to the tenant the metadata names; the tenant RPCs need a TenantManager (--tenants DIR)."""

    def __init__(self, tenants: Tenants, manager: TenantManager | None = None, metrics: Metrics | None = None) -> None:
        self.tenants = tenants
        self.manager = manager
        self.metrics = metrics

    @abort_on_error
    def Reload(self, request: search_pb2.ReloadRequest, context: grpc.ServicerContext) -> search_pb2.ReloadResponse:
        with self.tenants.lease(context) as tenant:
            check_token(context, tenant.catalog.auth_token if tenant.catalog else None)
            if tenant.reloader is None:
                raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, f"tenant {tenant.name!r} cannot hot-swap bundles "
                                                                       "(it accepts live writes; see README).")
            for field_name in ("bundle", "reranker", "ranker"):
                confine(tenant, field_name, getattr(request, field_name))
            try:
                new, old, seconds = tenant.reloader.reload(request.bundle, request.reranker, request.ranker)
            except FileNotFoundError as exc:
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            except ValueError as exc:
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return search_pb2.ReloadResponse(bundle_version=new.bundle.version,
                                         previous_bundle_version=old.bundle.version if old is not None else "",
                                         model_versions=model_versions(new.searcher), load_ms=seconds * 1e3)

    def _manager(self) -> TenantManager:
        if self.manager is None:
            raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, "this server serves one bundle (--bundle); tenants are "
                                                                   "managed on a server started with --tenants DIR.")
        return self.manager

    @abort_on_error
    def CreateTenant(self, request: search_pb2.CreateTenantRequest, context: grpc.ServicerContext) -> search_pb2.TenantInfo:
        try:
            tenant = self._manager().create(request.name, request.bundle, request.reranker, request.ranker,
                                            request.read_only, request.config_toml)
        except FileExistsError as exc:
            raise StatusError(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
        except InvalidRequest:
            raise
        except (ValueError, FileNotFoundError) as exc:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"could not open tenant {request.name!r}: {exc}") from None
        return tenant_info(tenant)

    @abort_on_error
    def ListTenants(self, request: search_pb2.ListTenantsRequest, context: grpc.ServicerContext) -> search_pb2.ListTenantsResponse:
        tenants = [tenant_info(t) for t in self.tenants if t.state.loaded]
        pools = {id(t.state.served.pool): t.state.served.pool for t in self.tenants
                 if t.state.loaded and t.state.served.pool is not None}
        shared = [m for pool in pools.values() for m in pool.stats()]
        return search_pb2.ListTenantsResponse(tenants=tenants, shared_models_json=json.dumps(shared))

    @abort_on_error
    def DropTenant(self, request: search_pb2.DropTenantRequest, context: grpc.ServicerContext) -> search_pb2.DropTenantResponse:
        return search_pb2.DropTenantResponse(archived_to=str(self._manager().drop(request.name)))
