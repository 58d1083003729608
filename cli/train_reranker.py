"""`vitrine train reranker`: fine-tune a cross-encoder on judgments with hard negatives from the first stage (trainer/reranker.py)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from vitrine.cli import ray_train


def register(tsub: argparse._SubParsersAction) -> None:
    """Adds this command to the `vitrine train` group (cli/train.py)."""
    p = tsub.add_parser("reranker", help="fine-tune a cross-encoder on judgments, with hard negatives from the first stage")
    p.add_argument("--catalog", required=True)
    p.add_argument("--queries", required=True, help="query JSONL (qid or _id, text)")
    p.add_argument("--qrels", required=True, help="training judgments (BEIR TSV)")
    p.add_argument("--out", required=True, help="cross-encoder directory to write")
    p.add_argument("--base", default="all-MiniLM-L6-v2", help="name or directory to start from (default: the offline MiniLM)")
    p.add_argument("--bundle", help="bundle to mine negatives with (default: index --catalog into a temporary one)")
    p.add_argument("--forbid-qrels", action="append", default=[], metavar="TSV",
                   help="held-out judgments whose queries must never be trained on (repeatable)")
    p.add_argument("--no-sibling-guard", action="store_true",
                   help="do not also forbid the queries of every other *.tsv beside --qrels (e.g. test.tsv)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--negatives", type=int)
    p.add_argument("--mine-depth", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--batch-queries", type=int)
    p.add_argument("--holdout", type=float)
    p.add_argument("--reserve-for-ranker", type=float, help="share of queries kept away from the cross-encoder for the ranker")
    p.add_argument("--max-queries", type=int, help="train on at most this many queries (quick runs)")
    p.add_argument("--generators", help="also train on pseudo-queries generated from the catalog (those of `vitrine train "
                                        "text`: attributes,title,cloze); they never enter the held-out split")
    p.add_argument("--max-generated", type=int, default=3000, help="at most this many generated pseudo-queries")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default=None)
    p.add_argument("--config", help="vitrine.toml (first-stage settings for mining)")
    p.add_argument("--quiet", action="store_true")
    ray_train.add_ray_arguments(p)
    p.set_defaults(handler=cmd_train_reranker)


def _mining_bundle(args: argparse.Namespace, config, items, tmp: Path):  # -> Searcher
    from vitrine.serving.assemble import open_served
    from vitrine.encoders.text import SentenceTransformerEncoder
    from vitrine.indexer.bundle import IndexerConfig, build_bundle

    if args.bundle:
        return open_served(args.bundle, config).searcher
    out = tmp / "mining-bundle"
    print(f"indexing {len(items)} items into a temporary bundle to mine negatives (pass --bundle to reuse one)", file=sys.stderr)
    encoder = SentenceTransformerEncoder(config.encoders.text_model, device=config.encoders.device)
    build_bundle(items, out, encoder, IndexerConfig(batch_size=config.encoders.batch_size, ann=config.index, bm25=config.bm25,
                                                    progress=not args.quiet))
    return open_served(str(out), config).searcher


def cmd_train_reranker(args: argparse.Namespace) -> int:
    from vitrine.serving.config import load_config
    from vitrine.indexer.bundle import item_text
    from vitrine.indexer.catalog import read_catalog
    from vitrine.ranking.metrics import load_qrels, load_queries
    from vitrine.ranking.pipeline import SearchRequest
    from vitrine.trainer.reranker import RerankerTask, RerankerTrainConfig, check_disjoint, forbidden_qids, train_reranker
    from vitrine.trainer.text_pairs import generated_queries

    ray = ray_train.ray_options(args, "train reranker")
    overrides = {k: v for k, v in {
        "epochs": args.epochs, "lr": args.lr, "negatives": args.negatives, "mine_depth": args.mine_depth,
        "max_length": args.max_length, "batch_queries": args.batch_queries, "holdout": args.holdout,
        "reserve_for_ranker": args.reserve_for_ranker, "seed": args.seed}.items() if v is not None}
    tconfig = RerankerTrainConfig(**overrides)
    if ray is not None:
        from vitrine.trainer.distributed import check_batch

        check_batch(tconfig.batch_queries, ray.workers, "--batch-queries")
    config = load_config(args.config)
    qrels = load_qrels(args.qrels)
    all_queries = load_queries(args.queries)
    texts = {q["qid"]: q.get("text", "") for q in all_queries}
    train_qids = [q for q in texts if q in qrels and texts[q]]
    if args.max_queries:
        train_qids = sorted(train_qids)[:args.max_queries]
    kept = check_disjoint(train_qids, forbidden_qids(args.qrels, args.forbid_qrels, not args.no_sibling_guard), texts)
    if len(kept) < len(train_qids):
        print(f"dropped {len(train_qids) - len(kept)} training queries whose text equals a held-out query's", file=sys.stderr)
    train_qids = kept
    items, _ = read_catalog(args.catalog, skip_invalid=True)
    docs = {it.id: item_text(it) for it in items}
    generated = generated_queries(items, args.generators.split(",") if args.generators else [], args.max_generated,
                                  tconfig.seed)
    texts.update({q: text for q, (text, _) in generated.items()})
    qrels = {**qrels, **{q: {item_id: 1} for q, (_, item_id) in generated.items()}}
    train_qids += list(generated)
    with tempfile.TemporaryDirectory(prefix="vitrine-mine-", dir=Path(args.out).resolve().parent) as tmp:
        searcher = _mining_bundle(args, config, items, Path(tmp))
        try:
            mined = {q: searcher.search(SearchRequest(text=texts[q], k=tconfig.mine_depth, stages="first")).hits
                     for q in train_qids}
        finally:
            searcher.bundle.close()
    candidates = {q: [h.id for h in hits] for q, hits in mined.items()}
    first_scores = {q: [h.score for h in hits] for q, hits in mined.items()}
    recall = sum(any(d in qrels[q] for d in candidates[q]) for q in train_qids) / max(len(train_qids), 1)
    print(f"mined {tconfig.mine_depth} first-stage candidates for {len(train_qids)} queries "
          f"(a relevant one among them for {recall:.1%})", file=sys.stderr)
    log = lambda m: print(m, file=sys.stderr)  # pickled by value for the Ray workers
    task = RerankerTask({q: texts[q] for q in train_qids}, qrels, docs, candidates, first_scores, list(generated))
    train = {"task": task, "config": tconfig, "progress": not args.quiet, "log": log,
             "extra_meta": {"catalog": str(Path(args.catalog).resolve()), "qrels": str(Path(args.qrels).resolve())}}
    if ray is None:
        summary = train_reranker(args.base, Path(args.out), device=args.device, **train)
    else:  # the mined candidates and the texts travel to the workers through Ray's object store
        summary = ray_train.run(train_reranker, {"base": ray_train.absolute(args.base), "out_dir": Path(args.out).resolve(),
                                                 **train}, ray, Path(args.out), log=log)
    print(json.dumps({"out": args.out, "best_epoch": summary["best_epoch"], "heldout": summary["heldout"],
                      "seconds": summary["seconds"]} | ray_train.summary_fields(ray)))
    return 0
