"""`vitrine export`: a bundle's items (live writes and their photos included) as a catalog JSONL `vitrine index` reads."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a bundle's items (live writes and their photos included) as a catalog "
                                      "JSONL that `vitrine index` reads")
    p.add_argument("--bundle", required=True, help="bundle directory (it may be served meanwhile)")
    p.add_argument("--out", required=True, help="catalog JSONL to write")
    p.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from vitrine.indexer.live import export_catalog

    n = export_catalog(args.bundle, args.out)
    print(json.dumps({"items": n, "out": args.out}))
    return 0
