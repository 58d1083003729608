"""`vitrine keys`: the API keys file a server reads (create, list, revoke)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEYS_ENV = "VITRINE_KEYS_FILE"  # the API keys file `vitrine serve` reads when --keys is not given


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="manage the API keys file a server reads (--keys)").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", help="add a key; prints it once (only its hash is stored)")
    p.add_argument("--file", required=True, help=f"the keys file (what `vitrine serve --keys` or ${KEYS_ENV} names)")
    p.add_argument("--tenant", required=True, help="the tenant the key acts for; '*' = every tenant (platform)")
    p.add_argument("--scopes", required=True, help="comma-separated: search, write, judge (grade results on /ui), admin")
    p.add_argument("--id", default="", help="a name for the key (default: TENANT-<random>)")
    p.set_defaults(handler=cmd_create)
    p = keys.add_parser("list", help="print the keys' ids, tenants and scopes (never the keys)")
    p.add_argument("--file", required=True)
    p.set_defaults(handler=cmd_list)
    p = keys.add_parser("revoke", help="remove a key by id (restart the server to apply)")
    p.add_argument("--file", required=True)
    p.add_argument("--id", required=True)
    p.set_defaults(handler=cmd_revoke)


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
