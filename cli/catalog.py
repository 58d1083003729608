"""`vitrine upsert | delete | get | snapshot`: live catalog changes sent to a running server over gRPC."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from vitrine.indexer.catalog import UnknownFields, check_catalog_path, collect_items, iter_catalog_jsonl, iter_utf8_jsonl
from vitrine.proto import search_pb2
from vitrine.server.client import TOKEN_ENV, CatalogClient, item_to_proto, local_photo, with_photo_bytes


def add_target(p: argparse.ArgumentParser, token: bool = True) -> None:
    """--target, --tenant and TLS options of every command that calls a server; the API key comes from $VITRINE_AUTH_TOKEN."""
    p.add_argument("--target", required=True, help="HOST:PORT")
    if token:
        p.add_argument("--token", default=None, help=f"legacy shared write secret (default: ${TOKEN_ENV}, which also "
                                                     "holds an API key)")
    p.add_argument("--tenant", default=None, help="the tenant to act on (metadata x-vitrine-tenant)")
    p.add_argument("--tls-ca", default=None, help="PEM CA to verify a TLS server with (default: plaintext)")


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The key, tenant and TLS credentials for a client from add_target's options."""
    from vitrine.server.auth import channel_credentials

    return {"token": getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None, "tenant": args.tenant,
            "credentials": channel_credentials(args.tls_ca) if args.tls_ca else None}




def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upsert", help="stream catalog items (JSONL) to a running server; prints `ack ID` per durable write")
    add_target(p)
    p.add_argument("--catalog", required=True, help="items as JSONL, one catalog object per line")
    p.add_argument("--patch", action="store_true", help="lines are partial updates: {id, price?, attributes?}; an "
                                                        "attribute set to \"\" or null is removed")
    p.set_defaults(handler=cmd_upsert)

    p = sub.add_parser("delete", help="delete items by id from a running server")
    add_target(p)
    p.add_argument("--ids", required=True, help="comma-separated ids")
    p.set_defaults(handler=cmd_delete)

    p = sub.add_parser("get", help="print stored items by id as JSON lines")
    add_target(p)
    p.add_argument("--ids", required=True, help="comma-separated ids")
    p.set_defaults(handler=cmd_get)

    p = sub.add_parser("snapshot", help="write a consistent copy of the live index to a directory on the server")
    add_target(p)
    p.add_argument("--out", required=True, help="directory to create (on the server's machine)")
    p.set_defaults(handler=cmd_snapshot)


def _ids(spec: str) -> list[str]:
    ids = [i.strip() for i in spec.split(",") if i.strip()]
    if not ids:
        raise ValueError("--ids must list at least one id")
    return ids


PATCH_FIELDS = ("id", "price", "attributes")


def _got(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)[:80]


def patch_from_dict(obj: Any) -> search_pb2.UpsertRequest:
    """One line of a patch file, {id, price?, attributes?}, as an UpsertRequest; ValueError names the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object {{id, price?, attributes?}}, got {type(obj).__name__}")
    for key in obj:
        if key not in PATCH_FIELDS:
            raise ValueError(f"{key}: a patch changes only price and attributes; send the whole item without --patch "
                             f"to change {key}" if key in ("title", "description", "category", "image")
                             else f"{key}: not a patch field (a patch is {{id, price?, attributes?}})")
    raw_id = obj.get("id")
    if raw_id is None:
        raise ValueError("id: missing; every patch names the item it changes")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
        raise ValueError(f"id: expected a non-empty string, got {_got(raw_id)}")
    attributes = obj.get("attributes")
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, dict):
        raise ValueError(f"attributes: expected an object of name -> value, got {_got(attributes)}")
    attrs: dict[str, str] = {}
    for key, value in attributes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
            raise ValueError(f"attributes.{key}: expected a string or number (\"\" or null removes it), got {_got(value)}")
        attrs[str(key)] = "" if value is None else str(value)
    patch = search_pb2.ItemPatch(id=str(raw_id).strip(), attributes=attrs)
    price = obj.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, (int, float)):
            raise ValueError(f"price: expected a number, got {_got(price)}")
        if not math.isfinite(price) or price < 0:
            raise ValueError(f"price: expected a finite non-negative number, got {_got(price)}")
        patch.price = float(price)
    return search_pb2.UpsertRequest(patch=patch)


def read_upserts(path: str | Path, patch: bool) -> list[search_pb2.UpsertRequest]:
    """Every line of an upsert (or --patch) file as a request, or CatalogError listing each bad line and each
    duplicate id, as `vitrine index` refuses them, before anything is sent. Unknown item fields get one warning each."""
    path = check_catalog_path(path)
    if patch:
        requests, _ = collect_items(iter_utf8_jsonl(path, patch_from_dict), path, skip_invalid=False,
                                    id_of=lambda r: r.patch.id)
        return requests
    unknown = UnknownFields()
    items, _ = collect_items(iter_catalog_jsonl(path, unknown), path, skip_invalid=False)
    for line in unknown.warnings():
        print(line, file=sys.stderr)
    missing = [(it.id, str(photo)) for it in items if (photo := local_photo(it.image, path.parent))
               and not (photo.is_file() and os.access(photo, os.R_OK))]
    if missing:
        raise ValueError(f"{path}: {len(missing)} item(s) name a photo that is not a readable file here, e.g. item "
                         f"{missing[0][0]!r}: {missing[0][1]} (image paths are relative to the catalog file).")
    return [search_pb2.UpsertRequest(item=item_to_proto(it)) for it in items]


def cmd_upsert(args: argparse.Namespace) -> int:
    requests = read_upserts(args.catalog, args.patch)
    base_dir = Path(args.catalog).parent  # as read_upserts checked the photos
    failed: list[ValueError] = []

    def stream():  # noqa: ANN202 - photos are read as the stream goes; a catalog's photos need not fit in memory
        for r in requests:
            try:
                yield with_photo_bytes(r, base_dir)
            except ValueError as exc:  # unreadable since the check: end the stream cleanly, report it below
                failed.append(exc)
                return

    with CatalogClient(args.target, **client_options(args)) as client:
        for ack in client.upsert(stream()):
            print(f"ack {ack.id}", flush=True)
    if failed:
        raise failed[0]  # every item acked above is durable; this one and the rest were not sent
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with CatalogClient(args.target, **client_options(args)) as client:
        print(json.dumps({"deleted": client.delete(_ids(args.ids))}))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with CatalogClient(args.target, **client_options(args)) as client:
        for item in client.get(_ids(args.ids)):
            print(json.dumps(item, ensure_ascii=False))
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    with CatalogClient(args.target, **client_options(args)) as client:
        resp = client.snapshot(args.out)
    print(json.dumps({"path": resp.path, "bundle_version": resp.bundle_version, "items": resp.items}))
    return 0
