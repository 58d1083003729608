"""`vitrine train ranker`: the LightGBM LambdaRank model on second-stage features (trainer/ranker.py, ranking/ltr.py)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(tsub: argparse._SubParsersAction) -> None:
    """Adds this command to the `vitrine train` group (cli/train.py)."""
    p = tsub.add_parser("ranker", help="train the LightGBM LambdaRank model on second-stage features")
    p.add_argument("--out", required=True, help="ranker directory to write")
    p.add_argument("--queries", required=True, help="query JSONL (qid or _id, text)")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--qrels", help="graded judgments (BEIR TSV)")
    labels.add_argument("--clicks", help="click log (JSONL); labels from clicks with position-bias correction")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="compute features in-process with the server's pipeline over this bundle")
    src.add_argument("--features", help="a feature log the server wrote ([logs] feature_log)")
    p.add_argument("--reranker", help="cross-encoder directory used for the cross_* features (with --bundle)")
    p.add_argument("--depth", type=int, default=None, help="candidates per query (default [rerank] depth)")
    p.add_argument("--include-reranker-queries", action="store_true",
                   help="also train on queries the cross-encoder trained on (its scores there are over-confident)")
    p.add_argument("--forbid-qrels", action="append", default=[], metavar="TSV", help="held-out judgments never to train on")
    p.add_argument("--no-sibling-guard", action="store_true")
    p.add_argument("--config", help="vitrine.toml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_train_ranker)


def cmd_train_ranker(args: argparse.Namespace) -> int:
    from vitrine.serving.config import load_config
    from vitrine.ranking.ltr import LtrRows, LtrTrainConfig, train_ranker
    from vitrine.ranking.metrics import load_qrels, load_queries
    from vitrine.trainer.ranker import collect_features, label_with_clicks, label_with_qrels, read_feature_log, reranker_seen_qids
    from vitrine.trainer.reranker import check_disjoint, forbidden_qids

    config = load_config(args.config)
    queries = load_queries(args.queries)
    texts = {q["qid"]: q.get("text", "") for q in queries}
    click_table = None
    if args.clicks:
        from vitrine.trainer.ranker import click_label_table

        click_table, queries = click_label_table(args.clicks, queries)
        labelled = set(click_table)
    else:
        qrels = load_qrels(args.qrels)
        labelled = set(qrels)
    seen = set() if args.include_reranker_queries else reranker_seen_qids(args.reranker)
    use = [q for q in queries if q["qid"] in labelled and q["qid"] not in seen and q.get("text")]
    if seen:
        print(f"leaving out {len(labelled & seen)} queries the cross-encoder trained on; {len(use)} remain", file=sys.stderr)
    kept = set(check_disjoint([q["qid"] for q in use], forbidden_qids(args.qrels, args.forbid_qrels, not args.no_sibling_guard), texts))
    if len(kept) < len(use):
        print(f"dropped {len(use) - len(kept)} queries whose text equals a held-out query's", file=sys.stderr)
    use = [q for q in use if q["qid"] in kept]
    depth = args.depth or config.rerank.depth
    if args.features:
        wanted = {" ".join(q["text"].split()): q["qid"] for q in use}
        groups, skipped = read_feature_log(args.features, wanted)
        print(f"read {len(groups)} queries from {args.features} ({skipped} lines for other queries)", file=sys.stderr)
    else:
        from vitrine.serving.assemble import open_served

        searcher = open_served(args.bundle, config, reranker=args.reranker).searcher
        try:
            groups = list(collect_features(searcher, use, depth, progress=not args.quiet))
        finally:
            searcher.bundle.close()
    meta = {"reranker": args.reranker, "bundle": args.bundle, "features_log": args.features, "depth": depth,
            "labels": "clicks" if args.clicks else "qrels", "train_qids": sorted({g.qid for g in groups})}
    if click_table is not None:
        X, y, qids, positions = label_with_clicks(groups, click_table)
        ltr_config = LtrTrainConfig(seed=args.seed, position_bias_regularization=0.0)
    else:
        X, y, qids = label_with_qrels(groups, qrels)
        positions, ltr_config = None, LtrTrainConfig(seed=args.seed)
    summary = train_ranker(LtrRows(X, y, qids, positions), Path(args.out), ltr_config, extra_meta=meta,
                           log=lambda m: print(m, file=sys.stderr))
    print(json.dumps({"out": args.out, "best_iteration": summary["best_iteration"], "valid": summary["valid"],
                      "queries": summary["train_queries"] + summary["valid_queries"], "rows": summary["rows"]}))
    return 0
