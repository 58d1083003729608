"""`vitrine click-labels`: the click-label table (qid, query, doc_id, position, label) the ranker trains on."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("click-labels", help="write the click-label table (qid, query, doc_id, position, label) for the ranker")
    p.add_argument("--clicks", required=True)
    p.add_argument("--out", required=True, help=".tsv or .jsonl")
    p.add_argument("--depth", type=int, default=None, help="positions per session (default: up to the last click)")
    p.set_defaults(handler=cmd_click_labels)


def cmd_click_labels(args: argparse.Namespace) -> int:
    from vitrine.ranking.clicklog import ClickLogSummary, iter_click_log
    from vitrine.trainer.clicks import click_label_rows, write_click_labels

    summary = ClickLogSummary()
    n = write_click_labels(click_label_rows(iter_click_log(args.clicks, summary), depth=args.depth), args.out)
    print(f"click log {args.clicks}: {summary}")
    print(json.dumps({"out": args.out, "rows": n, "sessions": summary.sessions, "malformed": summary.malformed}))
    return 0
