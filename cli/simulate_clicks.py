"""`vitrine simulate-clicks`: a SIMULATED click log from graded qrels (tests, benchmarks, demos)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate-clicks", help="SIMULATE a click log from graded qrels (for tests, benchmarks, demos)")
    p.add_argument("--queries", required=True, help="query JSONL (qid, text?, image?, exclude_ids?)")
    p.add_argument("--qrels", required=True, help="graded qrels TSV (BEIR layout)")
    p.add_argument("--catalog", required=True, help="catalog JSONL: distractor ids, and the folder query images are under")
    p.add_argument("--out", required=True, help="click log JSONL to write")
    p.add_argument("--run", help="rankings to show (JSONL of {qid, hits: [{id, score}]}); default: built from qrels")
    p.add_argument("--sessions-per-query", type=int, default=10)
    p.add_argument("--model", choices=["pbm", "cascade"], default="pbm")
    p.add_argument("--eta", type=float, default=1.0, help="PBM examination 1 / rank**eta")
    p.add_argument("--depth", type=int, default=10, help="items shown per session")
    p.add_argument("--distractors", type=int, default=20, help="random catalog items mixed into qrels rankings")
    p.add_argument("--ranking", choices=["shuffled", "ordered"], default="shuffled")
    p.add_argument("--click-prob", default="0:0.05,1:0.5,2:0.9", help="click probability by grade, e.g. 0:0.05,1:0.5,2:0.9")
    p.add_argument("--image-root", help="folder relative query images are under (default: the catalog's folder)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_simulate_clicks)


def parse_click_prob(spec: str) -> dict[int, float]:
    out = {}
    for part in filter(None, (s.strip() for s in spec.split(","))):
        grade, sep, prob = part.partition(":")
        try:
            out[int(grade)] = float(prob)
        except ValueError:
            raise ValueError(f"--click-prob entry {part!r} must look like GRADE:PROBABILITY, e.g. 2:0.9.") from None
        if not sep:
            raise ValueError(f"--click-prob entry {part!r} must look like GRADE:PROBABILITY, e.g. 2:0.9.")
    return out


def cmd_simulate_clicks(args: argparse.Namespace) -> int:
    from vitrine.indexer.catalog import read_catalog
    from vitrine.ranking.clicklog import ClickLogWriter
    from vitrine.ranking.evaluation import read_run
    from vitrine.ranking.metrics import load_qrels, load_queries
    from vitrine.trainer.simulate import SimulatorConfig, simulate_clicks

    try:
        config = SimulatorConfig.from_dict({
            "model": args.model, "eta": args.eta, "depth": args.depth, "distractors": args.distractors,
            "ranking": args.ranking, "sessions_per_query": args.sessions_per_query, "seed": args.seed,
            "click_prob": parse_click_prob(args.click_prob)})
    except ValueError as exc:
        raise SystemExit(f"simulate-clicks: {exc}") from None
    items, _ = read_catalog(args.catalog, skip_invalid=True)
    run = {q: [d for d, _ in hits] for q, hits in read_run(args.run).items()} if args.run else None
    image_root = Path(args.image_root) if args.image_root else Path(args.catalog).resolve().parent
    out = Path(args.out)
    if out.exists():
        out.unlink()  # a fresh log, not an append to an old one
    n = clicks = 0
    with ClickLogWriter(out) as writer:
        for s in simulate_clicks(load_queries(args.queries), load_qrels(args.qrels), config, [it.id for it in items],
                                 run=run, image_root=image_root):
            writer.write(s)
            n += 1
            clicks += len(s.clicked)
    print(json.dumps({"out": str(out), "sessions": n, "clicks": clicks, "model": config.model.value, "simulated": True}))
    return 0
