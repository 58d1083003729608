"""`vitrine delete`: delete items by id from a running server."""
from __future__ import annotations

import argparse
import json

from vitrine.cli.target import add_target, client_options, parse_ids


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("delete", help="delete items by id from a running server")
    add_target(p)
    p.add_argument("--ids", required=True, help="comma-separated ids")
    p.set_defaults(handler=cmd_delete)


def cmd_delete(args: argparse.Namespace) -> int:
    from vitrine.server.client import CatalogClient

    with CatalogClient(args.target, **client_options(args)) as client:
        print(json.dumps({"deleted": client.delete(parse_ids(args.ids))}))
    return 0
