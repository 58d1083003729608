"""`vitrine gate-text`: a tuned text model is promoted only if it wins on held-out queries without forgetting."""
from __future__ import annotations

import argparse

from vitrine.cli.gate import add_gate_options, finish_gate, gate_setup
from vitrine.cli.judgments import add_judgments_option, use_judgments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gate-text", help="promote a tuned text model only if it wins on held-out queries without forgetting")
    p.add_argument("--candidate", required=True, help="tuned text model dir (from `vitrine train text`)")
    p.add_argument("--current", help="serving text model: a name or dir (default: the registry's current)")
    p.add_argument("--catalog", required=True)
    p.add_argument("--queries", help="query JSONL")
    p.add_argument("--qrels", help="HELD-OUT judgments (never the ones the candidate trained on)")
    add_judgments_option(p)
    p.add_argument("--general", help="flickr8k captions.txt for the general paraphrase check")
    p.add_argument("--general-photos", type=int, default=300, help="photos in the general check (default 300)")
    add_gate_options(p)
    p.set_defaults(handler=cmd_gate_text)


def cmd_gate_text(args: argparse.Namespace) -> int:
    from vitrine.indexer.catalog import read_catalog
    from vitrine.ranking.metrics import load_qrels, load_queries
    from vitrine.trainer.text_gate import TextGateData, run_text_gate
    from vitrine.trainer.text_pairs import caption_check, read_captions, split_captions

    use_judgments(args, "vitrine gate-text")
    config, registry, current = gate_setup(args, "gate-text")
    items, _ = read_catalog(args.catalog, skip_invalid=True)
    general = None
    if args.general:
        captions = read_captions(args.general)
        # The same held-out photos `train text` kept out (same seed), so the check is on photos neither model saw.
        general = caption_check(captions, split_captions(captions, args.general_photos, config.seed)[1])
    data = TextGateData(items, load_queries(args.queries), load_qrels(args.qrels), general)
    return finish_gate(args, run_text_gate(args.candidate, current, data, config, device=args.device), registry)
