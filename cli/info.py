"""`vitrine info`: describe the bundle (models, counts, configuration) a running server is serving."""
from __future__ import annotations

import argparse
import json

from vitrine.cli.target import add_target, client_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe the bundle a server is serving")
    add_target(p, token=False)

    p.set_defaults(handler=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from vitrine.server.client import VitrineClient

    with VitrineClient(args.target, **client_options(args)) as client:
        print(json.dumps(client.info(), indent=2))
    return 0
