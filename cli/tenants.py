"""`vitrine tenants`: create, list or drop tenants of a running `vitrine serve --tenants` server."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitrine.cli.target import add_target, client_options


def register(sub: argparse._SubParsersAction) -> None:
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
