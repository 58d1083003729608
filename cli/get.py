"""`vitrine get`: print stored items by id as JSON lines."""
from __future__ import annotations

import argparse
import json

from vitrine.cli.target import add_target, client_options, parse_ids


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("get", help="print stored items by id as JSON lines")
    add_target(p)
    p.add_argument("--ids", required=True, help="comma-separated ids")
    p.set_defaults(handler=cmd_get)


def cmd_get(args: argparse.Namespace) -> int:
    from vitrine.server.client import CatalogClient

    with CatalogClient(args.target, **client_options(args)) as client:
        for item in client.get(parse_ids(args.ids)):
            print(json.dumps(item, ensure_ascii=False))
    return 0
