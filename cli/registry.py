"""`vitrine registry`: list, promote into, or roll back a model registry."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("registry", help="list, promote into, or roll back a model registry")
    rsub = p.add_subparsers(dest="registry_command", required=True)
    for name, help_text in (("list", "versions, the current one marked"), ("rollback", "make the previous model current"),
                            ("current", "print the current model's path")):
        r = rsub.add_parser(name, help=help_text)
        r.add_argument("--registry", required=True)
        r.set_defaults(handler=cmd_registry)
    r = rsub.add_parser("promote", help="add a model as the next version and make it current (no gate)")
    r.add_argument("--registry", required=True)
    r.add_argument("--model", required=True)
    r.set_defaults(handler=cmd_registry)


def cmd_registry(args: argparse.Namespace) -> int:
    from vitrine.trainer.registry import ModelRegistry, RegistryError

    registry = ModelRegistry(args.registry)
    try:
        if args.registry_command == "list":
            for v in registry.list():
                print(f"{'*' if v.current else ' '} {v.version}  {v.promoted}  {v.source}")
            if not registry.versions():
                print(f"registry {args.registry} is empty")
        elif args.registry_command == "rollback":
            previous = registry.current()
            print(f"rolled back {previous} -> {registry.rollback()}")
        elif args.registry_command == "current":
            print(registry.current_path())
        elif args.registry_command == "promote":
            print(f"promoted {args.model} as {registry.promote(args.model, note={'by': 'vitrine registry promote'})}")
    except RegistryError as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 1
    return 0
