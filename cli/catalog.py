"""`vitrine upsert | delete | get | snapshot`: live catalog changes sent to a running server over gRPC."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from vitrine.indexer.catalog import LineError, iter_catalog_jsonl
from vitrine.indexer.jsonl import read_jsonl
from vitrine.proto import search_pb2
from vitrine.server.client import TOKEN_ENV, CatalogClient, item_to_proto


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
    p.add_argument("--patch", action="store_true", help="lines are partial updates: {id, price?, attributes?}")
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


def patch_from_dict(obj: Any) -> search_pb2.UpsertRequest:
    """One line of a patch file, {id, price?, attributes?}, as an UpsertRequest."""
    if not isinstance(obj, dict):
        raise ValueError(f"not a patch object: expected {{id, price?, attributes?}}, got {type(obj).__name__}")
    patch = search_pb2.ItemPatch(id=str(obj["id"]), attributes={k: str(v) for k, v in (obj.get("attributes") or {}).items()})
    if obj.get("price") is not None:
        patch.price = float(obj["price"])
    return search_pb2.UpsertRequest(patch=patch)


def cmd_upsert(args: argparse.Namespace) -> int:
    path = Path(args.catalog)
    if not path.is_file():
        raise FileNotFoundError(f"catalog {path} does not exist")
    if args.patch:
        requests = read_jsonl(path, patch_from_dict)
    else:
        rows = list(iter_catalog_jsonl(path))
        errors = [r for _, r in rows if isinstance(r, LineError)]
        if errors:
            raise ValueError(f"{path}: {len(errors)} invalid line(s):\n  " + "\n  ".join(str(e) for e in errors[:20]))
        requests = [search_pb2.UpsertRequest(item=item_to_proto(r)) for _, r in rows]
    with CatalogClient(args.target, **client_options(args)) as client:
        for ack in client.upsert(requests):
            print(f"ack {ack.id}", flush=True)
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
