"""`vitrine keys` (API keys file: create, list, revoke) and `vitrine tenants` (create, list, drop on a running server)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitrine.cli.catalog import add_target, client_options
from vitrine.server.auth import KEYS_ENV


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="manage the API keys file a server reads (--keys)").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", help="add a key; prints it once (only its hash is stored)")
    p.add_argument("--file", required=True, help=f"the keys file (what `vitrine serve --keys` or ${KEYS_ENV} names)")
    p.add_argument("--tenant", required=True, help="the tenant the key acts for; '*' = every tenant (platform)")
    p.add_argument("--scopes", required=True, help="comma-separated: search, write, admin")
    p.add_argument("--id", default="", help="a name for the key (default: TENANT-<random>)")
    p.set_defaults(handler=cmd_create)
    p = keys.add_parser("list", help="print the keys' ids, tenants and scopes (never the keys)")
    p.add_argument("--file", required=True)
    p.set_defaults(handler=cmd_list)
    p = keys.add_parser("revoke", help="remove a key by id (restart the server to apply)")
    p.add_argument("--file", required=True)
    p.add_argument("--id", required=True)
    p.set_defaults(handler=cmd_revoke)

    tenants = sub.add_parser("tenants", help="create, list or drop tenants of a running `serve --tenants` server "
                                             "(a platform admin key in $VITRINE_AUTH_TOKEN)").add_subparsers(
        dest="tenants_command", required=True)
    p = tenants.add_parser("create", help="serve a bundle on the server's disk as a new tenant")
    add_target(p, token=False)
    p.add_argument("--name", required=True)
    p.add_argument("--bundle", required=True, help="bundle directory on the server")
    p.add_argument("--reranker", default="")
    p.add_argument("--ranker", default="")
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--tenant-config", help="a local tenant.toml fragment ([quota], [experiment], [search], ...)")
    p.set_defaults(handler=cmd_tenant_create)
    p = tenants.add_parser("list", help="each tenant with its bundle, items and models, and the shared models")
    add_target(p, token=False)
    p.set_defaults(handler=cmd_tenant_list)
    p = tenants.add_parser("drop", help="stop serving a tenant (its directory is archived on the server)")
    add_target(p, token=False)
    p.add_argument("--name", required=True)
    p.set_defaults(handler=cmd_tenant_drop)


def cmd_create(args: argparse.Namespace) -> int:
    from vitrine.server.auth import create_key

    key_id, key = create_key(args.file, args.tenant, [s.strip() for s in args.scopes.split(",") if s.strip()], args.id)
    print(f"created key {key_id} for tenant {args.tenant} ({args.scopes}); it is shown once:", file=sys.stderr)
    print(key)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    data = json.loads(Path(args.file).read_text(encoding="utf-8"))
    for rec in data.get("keys", []):
        print(json.dumps({"id": rec["id"], "tenant": rec["tenant"], "scopes": rec["scopes"]}))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from vitrine.server.auth import revoke_key

    if not revoke_key(args.file, args.id):
        raise ValueError(f"--id: no key {args.id!r} in {args.file}.")
    print(f"revoked {args.id}", file=sys.stderr)
    return 0


def _info(t: object) -> dict:
    return {"name": t.name, "bundle_version": t.bundle_version, "items": t.items, "read_only": t.read_only,
            "models": dict(t.model_versions), "backends": dict(t.backends), "quota": json.loads(t.quota_json or "{}"),
            **({"experiment": t.experiment} if t.experiment else {})}


def cmd_tenant_create(args: argparse.Namespace) -> int:
    from vitrine.server.client import VitrineClient

    extra = Path(args.tenant_config).read_text(encoding="utf-8") if args.tenant_config else ""
    with VitrineClient(args.target, **client_options(args)) as client:
        info = client.create_tenant(args.name, args.bundle, args.reranker, args.ranker, args.read_only, extra)
    print(json.dumps(_info(info)))
    return 0


def cmd_tenant_list(args: argparse.Namespace) -> int:
    from vitrine.server.client import VitrineClient

    with VitrineClient(args.target, **client_options(args)) as client:
        resp = client.list_tenants()
    print(json.dumps({"tenants": [_info(t) for t in resp.tenants], "shared_models": json.loads(resp.shared_models_json or "[]")},
                     indent=2))
    return 0


def cmd_tenant_drop(args: argparse.Namespace) -> int:
    from vitrine.server.client import VitrineClient

    with VitrineClient(args.target, **client_options(args)) as client:
        print(json.dumps({"dropped": args.name, "archived_to": client.drop_tenant(args.name)}))
    return 0
