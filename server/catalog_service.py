"""The Catalog gRPC service: streaming Upsert (acked once durable), Delete, Get and Snapshot over a LiveIndex."""
from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from vitrine.serving.config import CatalogConfig
from vitrine.indexer.catalog import MAX_EXTRA_PHOTOS, MAX_ID_LENGTH, Item, merge_photos
from vitrine.indexer.live import BadPhoto, LiveIndex
from vitrine.proto import search_pb2, search_pb2_grpc
from vitrine.ranking.pipeline import InvalidRequest
from vitrine.server.auth import check_token
from vitrine.server.status import Metrics, StatusError, abort_on_error, check_deadline, status_for
from vitrine.server.tenants import Tenant, Tenants

def _check_id(value: str, name: str) -> str:
    item_id = value.strip()
    if not item_id:
        raise InvalidRequest(name, "must not be empty.")
    if len(item_id) > MAX_ID_LENGTH:
        raise InvalidRequest(name, f"is {len(item_id)} characters; the limit is {MAX_ID_LENGTH}.")
    if any(ord(c) < 32 or ord(c) == 127 for c in item_id):
        raise InvalidRequest(name, "must not contain control characters.")
    return item_id


def _check_attributes(attrs: dict[str, str], name: str, cfg: CatalogConfig, allow_empty: bool) -> dict[str, str]:
    if len(attrs) > cfg.max_attributes:
        raise InvalidRequest(name, f"has {len(attrs)} entries; the limit is {cfg.max_attributes}.")
    for key, value in attrs.items():
        if not key.strip():
            raise InvalidRequest(name, "has an empty key.")
        if len(key) > cfg.max_attribute_chars or len(value) > cfg.max_attribute_chars:
            raise InvalidRequest(f"{name}.{key[:64]}", f"is longer than {cfg.max_attribute_chars} characters.")
        if not allow_empty and not value.strip():
            raise InvalidRequest(f"{name}.{key[:64]}", "must not be empty.")
    return dict(attrs)


def _check_price(value: float, name: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise InvalidRequest(name, f"must be a finite non-negative number, got {value}.")
    return float(value)


def item_from_proto(msg: search_pb2.Item, cfg: CatalogConfig) -> tuple[Item, bytes | None, list[bytes]]:
    """Validates a proto Item: (the item, its main photo's bytes when sent inline, the bytes of more photos). Raises
    InvalidRequest naming the field (e.g. `item.price`). The item's photos are, in order: the main one (`image` or
    `image_uri`), `image_uris`, then `images`."""
    item_id = _check_id(msg.id, "item.id")
    for name in ("title", "description", "category"):
        if len(getattr(msg, name)) > cfg.max_text_chars:
            raise InvalidRequest(f"item.{name}", f"is longer than {cfg.max_text_chars} characters.")
    attributes = _check_attributes(dict(msg.attributes), "item.attributes", cfg, allow_empty=False)
    price = _check_price(msg.price, "item.price") if msg.HasField("price") else None
    if len(msg.image_uri) > cfg.max_uri_chars:
        raise InvalidRequest("item.image_uri", f"is longer than {cfg.max_uri_chars} characters.")
    if msg.image and msg.image_uri:
        raise InvalidRequest("item.image", "send the photo's bytes (image) or its location (image_uri), not both.")
    if len(msg.image) > cfg.max_image_bytes:
        raise InvalidRequest("item.image", f"is {len(msg.image)} bytes; the limit is {cfg.max_image_bytes} "
                                           "([catalog] max_image_bytes).")
    uris = _check_more_photos(msg, cfg)
    photos = merge_photos(msg.image_uri or None, uris)   # uris are checked: this only merges, main photo first
    item = Item(id=item_id, title=msg.title, description=msg.description, category=msg.category,
                attributes=attributes, price=price, image=photos[0] if photos else None, extra_images=tuple(photos[1:]))
    return item, (bytes(msg.image) if msg.image else None), [bytes(b) for b in msg.images]


def _check_more_photos(msg: search_pb2.Item, cfg: CatalogConfig) -> list[str]:
    """The checked `image_uris` (refusing empty or long ones, empty or large `images`, and more than MAX_EXTRA_PHOTOS
    photos besides the main one)."""
    more = len(msg.image_uris) + len(msg.images) - (0 if msg.image or msg.image_uri else 1)
    if more > MAX_EXTRA_PHOTOS:
        raise InvalidRequest("item.images", f"the item has {more} photos besides its main one; the limit is "
                                            f"{MAX_EXTRA_PHOTOS}.")
    for n, uri in enumerate(msg.image_uris):
        if not uri.strip():
            raise InvalidRequest(f"item.image_uris[{n}]", "must not be empty.")
        if len(uri) > cfg.max_uri_chars:
            raise InvalidRequest(f"item.image_uris[{n}]", f"is longer than {cfg.max_uri_chars} characters.")
    for n, data in enumerate(msg.images):
        if not data:
            raise InvalidRequest(f"item.images[{n}]", "is empty.")
        if len(data) > cfg.max_image_bytes:
            raise InvalidRequest(f"item.images[{n}]", f"is {len(data)} bytes; the limit is {cfg.max_image_bytes} "
                                                      "([catalog] max_image_bytes).")
    return list(msg.image_uris)


def snapshot_dir(tenant: Tenant, out_dir: str) -> Path:
    """Where a snapshot goes. A tenant of a `--tenants` server names a snapshot, written under its own directory
    (`DIR/<tenant>/snapshots/<name>`), so no key can write into another tenant's files; a single-bundle server
    takes a directory path, as before."""
    name = out_dir.strip()
    if not name:
        raise InvalidRequest("out_dir", "must name a directory on the server." if tenant.dir is None else
                             "must name the snapshot (a-z, 0-9, '_', '-', '.').")
    if tenant.dir is None:
        return Path(name)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name) or name in (".", ".."):
        raise InvalidRequest("out_dir", f"{name!r}: a tenant's snapshot is a name (a-z, 0-9, '_', '-', '.'), written "
                                        f"under its own snapshots/ directory.")
    return tenant.dir / "snapshots" / name


class CatalogServicer(search_pb2_grpc.CatalogServicer):
    """Thin: proto -> Item -> the tenant's LiveIndex -> ack. Callers are checked by the key interceptor (server/auth.py)
    or, on a server without API keys, by the tenant's shared write token when one is configured."""

    def __init__(self, tenants: Tenants, metrics: Metrics | None = None, max_streams: int = 8) -> None:
        self.tenants = tenants
        self.metrics = metrics
        self.max_streams = max_streams
        self._streams_lock = threading.Lock()

    @contextmanager
    def _tenant(self, context: grpc.ServicerContext, request: object | None = None, write: bool = False) -> Iterator[Tenant]:
        """The RPC's tenant, leased for the whole call, after its write token (legacy) and quota checks (a stream,
        `request` None, pays per item instead)."""
        with self.tenants.lease(context) as tenant:
            if write:
                check_token(context, tenant.catalog.auth_token)
            if request is not None:
                tenant.quota.admit(request.ByteSize())
            yield tenant

    @contextmanager
    def _stream_slot(self, tenant: Tenant) -> Iterator[None]:
        """At most max_streams Upsert streams per tenant: one shop cannot hold every stream of the server."""
        with self._streams_lock:
            if tenant.streams >= self.max_streams:
                raise StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"tenant {tenant.name!r} has {tenant.streams} upsert streams open; retry later.")
            tenant.streams += 1
        try:
            yield
        finally:
            with self._streams_lock:
                tenant.streams -= 1

    def Upsert(self, request_iterator: Iterator[search_pb2.UpsertRequest], context: grpc.ServicerContext
               ) -> Iterator[search_pb2.UpsertAck]:
        """Acks each item after its WAL record is fsync'd and applied; the first bad item ends the stream."""
        t0, code, message = time.perf_counter(), grpc.StatusCode.OK, ""
        try:
            with self._tenant(context, write=True) as tenant, self._stream_slot(tenant), tenant.quota.slot():
                live = tenant.state.require_live()
                for n, req in enumerate(request_iterator):
                    check_deadline(context)
                    tenant.quota.admit(req.ByteSize())   # every item is a request for the quota
                    yield self._upsert_one(tenant, live, req, n)
        except grpc.RpcError:  # the client cancelled or went away mid-stream; every acked item is durable
            code = grpc.StatusCode.CANCELLED
            return
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            code, message = status_for(exc, "Upsert")
        finally:
            if self.metrics is not None:
                self.metrics.observe("Upsert", code, time.perf_counter() - t0)
        if code != grpc.StatusCode.OK:
            context.abort(code, message)

    def _upsert_one(self, tenant: Tenant, live: LiveIndex, req: search_pb2.UpsertRequest, n: int) -> search_pb2.UpsertAck:
        """One message of the stream is one write, acked when durable: a long-lived stream may send the same id again
        later (a price, then a new photo), and each is applied in order. (A file of items, `vitrine upsert`, is one
        batch and refuses duplicate ids, as `vitrine index` does.)"""
        kind = req.WhichOneof("change")
        config = tenant.catalog
        try:
            if kind == "item":
                item, photo, more = item_from_proto(req.item, config)
                if tenant.quota.config.max_items and not live.get([item.id]):
                    tenant.quota.check_items(len(live.bundle.docstore), 1)
                try:
                    changed = live.upsert([item], {item.id: photo} if photo is not None else None,
                                          {item.id: more} if more else None)
                except BadPhoto as exc:
                    raise InvalidRequest(f"item.{exc.field}", f"item {exc.item_id!r}: {exc.reason}") from None
                return search_pb2.UpsertAck(id=item.id, changed=changed > 0)
            if kind == "patch":
                item_id = _check_id(req.patch.id, "patch.id")
                price = _check_price(req.patch.price, "patch.price") if req.patch.HasField("price") else None
                attrs = _check_attributes(dict(req.patch.attributes), "patch.attributes", config, allow_empty=True)
                before = live.get([item_id])
                merged = live.patch(item_id, price, attrs)
                if merged is None:
                    raise StatusError(grpc.StatusCode.NOT_FOUND, f"patch.id: no item {item_id!r} to patch (request {n}).")
                return search_pb2.UpsertAck(id=item_id, changed=not before or before[0] != merged)
            raise InvalidRequest("item", "each UpsertRequest needs an item or a patch.")
        except InvalidRequest as exc:
            # Say which request of the stream was bad; everything before it was acked.
            raise InvalidRequest(exc.field, f"{str(exc).removeprefix(exc.field + ': ')} (request {n})") from None

    @abort_on_error
    def Delete(self, request: search_pb2.DeleteRequest, context: grpc.ServicerContext) -> search_pb2.DeleteResponse:
        with self._tenant(context, request, write=True) as tenant:
            ids = self._ids(request.ids, tenant.catalog)
            live = tenant.state.require_live()
            check_deadline(context)
            return search_pb2.DeleteResponse(deleted=live.delete(ids))

    @abort_on_error
    def Get(self, request: search_pb2.GetRequest, context: grpc.ServicerContext) -> search_pb2.GetResponse:
        with self._tenant(context, request) as tenant:
            ids = self._ids(request.ids, tenant.catalog)
            # The searcher first: once it is set (UNAVAILABLE while loading), the live index, if any, is set too.
            searcher = tenant.state.searcher
            live = tenant.state.live
            if live is not None:
                items = live.get(ids)   # under the index lock, beside writes
            else:
                # A read-only server's docstore is never written; a hot swap replaces the whole searcher and closes the
                # old one long after any request (server/admin.py), so this one stays readable for the call.
                docstore = searcher.bundle.docstore
                items = [it for it in map(docstore.get, ids) if it is not None]
            return search_pb2.GetResponse(items_json=[json.dumps(it.to_dict(), ensure_ascii=False) for it in items])

    @abort_on_error
    def Snapshot(self, request: search_pb2.SnapshotRequest, context: grpc.ServicerContext) -> search_pb2.SnapshotResponse:
        with self._tenant(context, request, write=True) as tenant:
            out_dir = snapshot_dir(tenant, request.out_dir)
            live = tenant.state.require_live()
            try:
                manifest = live.snapshot(str(out_dir))
            except FileExistsError as exc:
                raise StatusError(grpc.StatusCode.ALREADY_EXISTS, f"out_dir: {exc}") from None
            except OSError as exc:
                raise StatusError(grpc.StatusCode.FAILED_PRECONDITION, f"out_dir: {exc.strerror or exc}") from None
            return search_pb2.SnapshotResponse(path=str(out_dir), bundle_version=manifest.bundle_version,
                                               items=manifest.counts.items)

    def _ids(self, raw: list[str], config: CatalogConfig) -> list[str]:
        if not raw:
            raise InvalidRequest("ids", "must list at least one id.")
        if len(raw) > config.max_ids:
            raise InvalidRequest("ids", f"has {len(raw)} ids; the limit is {config.max_ids}.")
        return [_check_id(i, f"ids[{n}]") for n, i in enumerate(raw)]
