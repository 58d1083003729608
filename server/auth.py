"""API keys per tenant with scopes, checked on every RPC by one server interceptor; TLS credentials.

Keys live in a JSON file (`vitrine keys create` writes it): each record holds a key id, a tenant (or "*" for the
platform's admin keys), scopes, and the SHA-256 of the key, never the key itself. The file's path comes from
`vitrine serve --keys FILE` or $VITRINE_KEYS_FILE; the key a client sends is `authorization: Bearer <key>`.

    scope    RPCs
    search   Search.Search, Search.Info, Search.Feedback, Catalog.Get
    write    Catalog.Upsert, Catalog.Delete
    judge    grading results on the workbench (`/ui`, POST /v1/judge) and reading the judgments (GET /v1/judgments)
    admin    Catalog.Snapshot, Admin.Reload (of its own tenant); with tenant "*": every RPC of every tenant, and
             Admin.CreateTenant, ListTenants, DropTenant
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from vitrine.serving.tenancy import check_name

ALL_TENANTS = "*"
JUDGE_METHOD = "/vitrine.v1.Workbench/Judge"
SCOPES = ("search", "write", "judge", "admin")
# Every RPC that carries tenant data, by the scope it needs. Health and reflection are open (probes, tooling).
METHOD_SCOPES = {
    "/vitrine.v1.Search/Search": "search",
    "/vitrine.v1.Search/Info": "search",
    "/vitrine.v1.Search/Feedback": "search",
    "/vitrine.v1.Catalog/Get": "search",
    "/vitrine.v1.Catalog/Upsert": "write",
    "/vitrine.v1.Catalog/Delete": "write",
    "/vitrine.v1.Catalog/Snapshot": "admin",
    "/vitrine.v1.Admin/Reload": "admin",
    # The workbench's judging (server/workbench.py): HTTP only, named like RPCs so one table holds every scope.
    JUDGE_METHOD: "judge",
}
PLATFORM_METHODS = ("/vitrine.v1.Admin/CreateTenant", "/vitrine.v1.Admin/ListTenants", "/vitrine.v1.Admin/DropTenant")
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str
    scopes: frozenset[str]
    sha256: str

    @property
    def platform_admin(self) -> bool:
        """The platform's key (tenant "*", scope admin): every RPC of every tenant."""
        return self.tenant == ALL_TENANTS and "admin" in self.scopes

    def may(self, scope: str) -> bool:
        return scope in self.scopes or self.platform_admin


def key_hash(key: str) -> str:
    # Keys are 32 random bytes, so a fast hash is enough (no dictionary to guess from, unlike passwords).
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The keys a server accepts, read once at start (restart or reload the server to apply a changed file)."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @classmethod
    def load(cls, path: str | Path) -> KeyStore:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"keys file {path} does not exist; create keys with `vitrine keys create --file {path}`.") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"keys file {path} is not valid JSON: line {exc.lineno}: {exc.msg}") from None
        keys = []
        for n, rec in enumerate(data.get("keys", []) if isinstance(data, dict) else [], start=1):
            try:
                keys.append(_parse(rec))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"keys file {path}: key {n}: {exc}") from None
        return cls(keys)

    def authenticate(self, presented: str) -> ApiKey | None:
        """The key matching `presented`, compared in constant time against every stored hash."""
        digest = key_hash(presented).encode()
        found = None
        for key in self.keys:  # no early exit: the time taken does not depend on which key matched
            if hmac.compare_digest(digest, key.sha256.encode()):
                found = key
        return found

    def __len__(self) -> int:
        return len(self.keys)


def _parse(rec: dict[str, Any]) -> ApiKey:
    tenant = rec["tenant"]
    if tenant != ALL_TENANTS:
        check_name(tenant)
    scopes = frozenset(rec["scopes"])
    if not scopes or scopes - set(SCOPES):
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}, got {sorted(scopes)}.")
    if len(rec["sha256"]) != 64:
        raise ValueError("sha256 must be 64 hex digits.")
    return ApiKey(str(rec["id"]), tenant, scopes, rec["sha256"])


def create_key(path: str | Path, tenant: str, scopes: list[str], key_id: str = "") -> tuple[str, str]:
    """Adds a key to the file (created if missing, written atomically, mode 0600); returns (id, key). The key is
    shown once: only its hash is stored."""
    if tenant != ALL_TENANTS:
        check_name(tenant, "--tenant")
    bad = set(scopes) - set(SCOPES)
    if not scopes or bad:
        raise ValueError(f"--scopes must be some of {', '.join(SCOPES)}, got {','.join(scopes) or 'none'}.")
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"keys": []}
    key_id = key_id or f"{tenant.replace('*', 'platform')}-{secrets.token_hex(4)}"
    if any(r["id"] == key_id for r in data["keys"]):
        raise ValueError(f"--id: a key {key_id!r} already exists in {path}.")
    key = "vk_" + secrets.token_urlsafe(32)
    data["keys"].append({"id": key_id, "tenant": tenant, "scopes": sorted(set(scopes)), "sha256": key_hash(key)})
    _write(path, data)
    return key_id, key


def revoke_key(path: str | Path, key_id: str) -> bool:
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    kept = [r for r in data["keys"] if r["id"] != key_id]
    if len(kept) == len(data["keys"]):
        return False
    _write(path, {**data, "keys": kept})
    return True


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def check_access(keys: KeyStore, method: str, metadata: Sequence[tuple[str, str]]) -> tuple[grpc.StatusCode, str] | None:
    """None when the caller may make this call; else the status and message to answer with."""
    from vitrine.server.status import StatusError
    from vitrine.server.tenants import DEFAULT_TENANT, TENANT_HEADER, single_value

    if method.startswith(OPEN_PREFIXES):
        return None
    try:  # the same one value the router will read; a header sent twice is refused here already
        sent, tenant = single_value(metadata, "authorization"), single_value(metadata, TENANT_HEADER)
    except StatusError as exc:
        return exc.code, str(exc)
    if not sent.startswith("Bearer ") or not sent[7:].strip():
        return grpc.StatusCode.UNAUTHENTICATED, "this server needs an API key: metadata 'authorization: Bearer <key>'."
    key = keys.authenticate(sent[7:].strip())
    if key is None:
        return grpc.StatusCode.UNAUTHENTICATED, "the API key is not valid."
    if method in PLATFORM_METHODS:
        if key.platform_admin:
            return None
        return grpc.StatusCode.PERMISSION_DENIED, "managing tenants needs a platform admin key (tenant '*', scope admin)."
    scope = METHOD_SCOPES.get(method)
    if scope is None:  # a method this table does not know: refuse rather than serve it unchecked
        return grpc.StatusCode.PERMISSION_DENIED, f"{method} is not open to API keys."
    tenant = tenant or DEFAULT_TENANT
    if key.tenant != ALL_TENANTS and key.tenant != tenant:
        return grpc.StatusCode.PERMISSION_DENIED, f"this key is not valid for tenant {tenant!r}."
    if not key.may(scope):
        return grpc.StatusCode.PERMISSION_DENIED, f"this key lacks the {scope!r} scope that {method.rsplit('/', 1)[-1]} needs."
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks every RPC's key before its handler runs; a refused call never reaches a servicer."""

    def __init__(self, keys: KeyStore, on_refuse: Callable[[str, grpc.StatusCode], None] | None = None) -> None:
        self.keys = keys
        self.on_refuse = on_refuse

    def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001, ANN201 - grpc's protocol
        metadata = tuple(handler_call_details.invocation_metadata or ())
        refused = check_access(self.keys, handler_call_details.method, metadata)
        handler = continuation(handler_call_details)
        if refused is None or handler is None:
            return handler
        code, message = refused
        if self.on_refuse is not None:
            self.on_refuse(handler_call_details.method, code)

        def abort(request, context):  # noqa: ANN001, ANN202
            context.abort(code, message)

        kind = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
        return kind[(handler.request_streaming, handler.response_streaming)](
            abort, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


def check_token(context: grpc.ServicerContext, token: str | None) -> None:
    """The shared write token of a server without API keys (`[catalog] auth_token`); nothing to check when unset."""
    from vitrine.server.status import StatusError
    from vitrine.server.tenants import single_value

    if token is None:
        return
    sent = single_value(context.invocation_metadata(), "authorization")
    if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        raise StatusError(grpc.StatusCode.UNAUTHENTICATED, "write RPCs need metadata 'authorization: Bearer <token>'.")


def server_credentials(cert: str | Path, key: str | Path, client_ca: str | Path | None = None) -> grpc.ServerCredentials:
    """TLS for the server port from PEM files; with `client_ca`, clients must present a certificate it signed (mTLS)."""
    pair = (Path(key).read_bytes(), Path(cert).read_bytes())
    if client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials([pair], root_certificates=Path(client_ca).read_bytes(), require_client_auth=True)


def channel_credentials(ca: str | Path | None = None, cert: str | Path | None = None,
                        key: str | Path | None = None) -> grpc.ChannelCredentials:
    """A client's TLS: trust `ca` (default: the system's roots); `cert` and `key` for mTLS."""
    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    return grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))
