"""The `vitrine` command: one parser over every command module, each a thin harness over the library.

Layers: `cli/` sits on top and may start either door, `server/` (gRPC) or `trainer/` (training); those two import
only the library (`encoders/`, `indexer/`, `ranking/`) and never each other.
"""
from __future__ import annotations

import argparse
import sys

import grpc

from vitrine.cli import ab, catalog, demo, evaluate, index, keys, loop, retrain, search, serve, train

COMMANDS = (index, serve, search, catalog, keys, demo, train, loop, retrain, evaluate, ab)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitrine", description="Multimodal product search.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vitrine.server.logs import setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:   # an optional extra is missing; the message names what to install
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
