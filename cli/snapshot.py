"""`vitrine snapshot`: a consistent copy of a running server's live index, written on its machine."""
from __future__ import annotations

import argparse
import json

from vitrine.cli.target import add_target, client_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="write a consistent copy of the live index to a directory on the server")
    add_target(p)
    p.add_argument("--out", required=True, help="directory to create (on the server's machine)")
    p.set_defaults(handler=cmd_snapshot)


def cmd_snapshot(args: argparse.Namespace) -> int:
    from vitrine.server.client import CatalogClient

    with CatalogClient(args.target, **client_options(args)) as client:
        resp = client.snapshot(args.out)
    print(json.dumps({"path": resp.path, "bundle_version": resp.bundle_version, "items": resp.items}))
    return 0
