"""`vitrine train text`: tune the text embedder on a catalog (pairs generated from it, or judged queries), with
hard negatives from Vitrine's own first stage and general caption pairs against forgetting (trainer/text.py)."""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from vitrine.cli import ray_train


def register(tsub: argparse._SubParsersAction) -> None:
    p = tsub.add_parser("text", help="adapt the text embedding model to a catalog and prove the gain against the base")
    p.add_argument("--catalog", required=True)
    p.add_argument("--out", required=True, help="sentence-transformers model directory to write")
    p.add_argument("--base", help="name or directory to start from (default [encoders] text_model, the offline MiniLM)")
    p.add_argument("--queries", help="query JSONL, with --qrels: train on (query, relevant item) pairs too")
    p.add_argument("--qrels", help="training judgments (BEIR TSV); other *.tsv beside it are refused as held out")
    p.add_argument("--forbid-qrels", action="append", default=[], metavar="TSV", help="held-out judgments never to train on")
    p.add_argument("--no-sibling-guard", action="store_true", help="do not forbid the queries of other *.tsv beside --qrels")
    p.add_argument("--generators", help="catalog pair generators, comma-separated: attributes,title,cloze (default all); "
                                        "'none' trains on judged pairs only")
    p.add_argument("--general", help="flickr8k captions.txt: general paraphrase pairs mixed into training and the "
                                     "held-out general check (recommended; without it nothing guards against forgetting)")
    p.add_argument("--bundle", help="bundle to mine negatives with (default: index --catalog with the base model)")
    for flag, kind in (("--epochs", int), ("--batch-size", int), ("--lr", float), ("--max-pairs", int), ("--negatives", int),
                       ("--general-fraction", float), ("--max-seq-length", int), ("--patience", int), ("--seed", int)):
        p.add_argument(flag, type=kind, default=None)
    p.add_argument("--loss", choices=["mnrl", "cached_mnrl"], default=None)
    p.add_argument("--adapter", choices=["none", "lora"], default=None,
                   help="lora: train a LoRA adapter on the frozen base (megabytes; default lr 2e-4) instead of the whole model")
    p.add_argument("--lora-rank", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--config", help="vitrine.toml (first-stage settings for mining)")
    p.add_argument("--quiet", action="store_true")
    t = p.add_argument_group("experiment tracking (MLflow, local file store)")
    t.add_argument("--mlflow-dir", default="runs/mlruns")
    t.add_argument("--experiment", default="vitrine-text")
    t.add_argument("--no-mlflow", action="store_true")
    ray_train.add_ray_arguments(p)
    p.set_defaults(handler=cmd_train_text)


def _config(args: argparse.Namespace) -> Any:
    from vitrine.trainer.text import TextTrainConfig

    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "max_pairs": args.max_pairs,
                 "negatives": args.negatives, "general_fraction": args.general_fraction,
                 "max_seq_length": args.max_seq_length, "patience": args.patience, "seed": args.seed, "loss": args.loss,
                 "adapter": args.adapter, "lora_rank": args.lora_rank}
    if args.generators:
        overrides["generators"] = [] if args.generators == "none" else args.generators.split(",")
    return TextTrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})


def _judged(args: argparse.Namespace, items: dict) -> tuple[list, list[tuple[str, str]]]:
    from vitrine.ranking.metrics import load_qrels, load_queries
    from vitrine.trainer.reranker import check_disjoint, forbidden_qids
    from vitrine.trainer.text_pairs import judged_pairs

    if not args.qrels:
        return [], []
    if not args.queries:
        raise ValueError("--qrels needs --queries (the texts of the judged queries).")
    qrels = load_qrels(args.qrels)
    texts = {q["qid"]: q.get("text", "") for q in load_queries(args.queries)}
    qids = [q for q in texts if q in qrels and texts[q]]
    kept = check_disjoint(qids, forbidden_qids(args.qrels, args.forbid_qrels, not args.no_sibling_guard), texts)
    if len(kept) < len(qids):
        print(f"dropped {len(qids) - len(kept)} training queries whose text equals a held-out query's", file=sys.stderr)
    return judged_pairs(texts, qrels, items, kept), [(q, texts[q]) for q in kept]


def _split(pairs: list, holdout: int, seed: int, share: int = 5) -> tuple[list, list]:
    """(train, held-out) by anchor, so no held-out anchor is trained on; at most 1/share of the anchors are held out."""
    anchors = sorted({p.anchor for p in pairs})
    random.Random(seed).shuffle(anchors)
    held = set(anchors[:min(holdout, max(1, len(anchors) // share))])
    return [p for p in pairs if p.anchor not in held], [p for p in pairs if p.anchor in held]


@contextlib.contextmanager
def _mining_searcher(args: argparse.Namespace, config: Any, base: str, items: list, out: Path):  # -> Searcher
    from vitrine.serving.assemble import open_served
    from vitrine.encoders.text import SentenceTransformerEncoder
    from vitrine.indexer.ann import AnnConfig
    from vitrine.indexer.bundle import IndexerConfig, build_bundle

    if args.bundle:
        searcher = open_served(args.bundle, config).searcher
    else:
        tmp = tempfile.TemporaryDirectory(prefix="vitrine-mine-", dir=out.resolve().parent)
        bundle = Path(tmp.name) / "bundle"
        print(f"indexing {len(items)} items with {base} to mine negatives (pass --bundle to reuse one)", file=sys.stderr)
        flat = replace(config, index=AnnConfig(factory="Flat"))  # exact vectors: the margin check reads them back
        encoder = SentenceTransformerEncoder(base, device=config.encoders.device)
        build_bundle(items, bundle, encoder, IndexerConfig(batch_size=config.encoders.batch_size, ann=flat.index,
                                                           bm25=config.bm25, progress=not args.quiet))
        searcher = open_served(str(bundle), flat).searcher
    try:
        yield searcher
    finally:
        searcher.bundle.close()
        if not args.bundle:
            tmp.cleanup()


def cmd_train_text(args: argparse.Namespace) -> int:
    from vitrine.serving.config import load_config
    from vitrine.indexer.catalog import read_catalog
    from vitrine.trainer import text, text_pairs

    ray = ray_train.ray_options(args, "train text")
    tconfig, config = _config(args), load_config(args.config)
    if ray is not None:
        from vitrine.trainer.distributed import check_batch

        check_batch(tconfig.batch_size, ray.workers)
    base = args.base or config.encoders.text_model
    out = Path(args.out)
    items, _ = read_catalog(args.catalog, skip_invalid=True)
    by_id = {it.id: it for it in items}
    judged, train_qids = _judged(args, by_id)
    generated = text_pairs.generate_pairs(items, tconfig.generators, tconfig.per_item, tconfig.seed)
    # Judged pairs are the scarce, real signal: all of them train (but a tenth of their queries, held out, check
    # the model); generated pairs fill the rest of max_pairs, and are held out only when nothing is judged.
    if judged:
        train, held = _split(judged, tconfig.holdout_pairs, tconfig.seed, share=10)
    else:
        generated, held = _split(generated, tconfig.holdout_pairs, tconfig.seed)
        train = []
    random.Random(tconfig.seed).shuffle(generated)
    train = (train + generated)[:max(tconfig.max_pairs, len(train))]
    if not train:
        raise ValueError("no training pairs: give --qrels/--queries or a generator that fits this catalog.")
    relevant: dict[str, set[str]] = {}
    for p in judged:
        relevant.setdefault(p.anchor, set()).add(p.item_id)
    with _mining_searcher(args, config, base, items, out) as searcher:
        triplets = text.mine_negatives(train, searcher, by_id, tconfig, relevant, progress=not args.quiet)
    print(f"{len(triplets)} triplets from {len(train)} pairs ({len(judged)} judged, {len(generated)} generated)", file=sys.stderr)
    evaluators = {"domain": text.ir_evaluator("domain", *text.heldout_task(held, by_id, 1000, tconfig.seed), tconfig.batch_size)}
    general_photos: list[str] = []
    if args.general:
        captions = text_pairs.read_captions(args.general)
        photos, general_photos = text_pairs.split_captions(captions, tconfig.general_holdout, tconfig.seed)
        n = int(round(len(triplets) * tconfig.general_fraction / (1 - tconfig.general_fraction)))
        triplets += text.general_triplets(text_pairs.general_pairs(captions, photos, n, tconfig.seed), tconfig.seed)
        evaluators["general"] = text.ir_evaluator("general", *text_pairs.caption_check(captions, general_photos),
                                                  tconfig.batch_size)
    else:
        print("no --general captions: nothing is mixed in against forgetting and no general check is measured", file=sys.stderr)
    trained_anchors = {p.anchor for p in train}
    meta = {"catalog": str(Path(args.catalog).resolve()), "catalog_fingerprint": text.fingerprint(items),
            "generators": list(tconfig.generators), "pairs": {"judged": len(judged), "generated": len(generated),
                                                              "trained": len(train), "heldout": len(held)},
            "training_qids": sorted(q for q, t in train_qids if t in trained_anchors), "qrels": args.qrels, "general": args.general,
            "general_heldout_photos": len(general_photos), "mining_bundle": args.bundle or "temporary (base model, Flat)"}
    tracker = None if args.no_mlflow else _tracker(args, out)
    with tracker or contextlib.nullcontext():
        log = lambda m: print(m, file=sys.stderr)  # pickled by value for the Ray workers
        if ray is None:
            result = text.train_text(base, out, text.TextTask(triplets, evaluators), tconfig, meta, device=args.device,
                                     progress=not args.quiet, log=log)
        else:  # the mined triplets and the evaluators travel to the workers through Ray's object store
            result = ray_train.run(text.train_text, {
                "base": ray_train.absolute(base), "out": out.resolve(), "task": text.TextTask(triplets, evaluators),
                "config": tconfig, "meta": meta, "progress": not args.quiet, "log": log}, ray, out, log=log)
        if tracker is not None:
            tracker.log_params({"base": base, **result["training"]["config"], "generators": ",".join(tconfig.generators)})
            tracker.log_metrics({f"base.{k}": v for k, v in result["metrics"]["base"].items()})
            tracker.log_metrics({f"tuned.{k}": v for k, v in result["metrics"]["tuned"].items()})
            tracker.log_model_dir(out)
    print(json.dumps(summary(result, out) | ray_train.summary_fields(ray)))
    return 0


def _tracker(args: argparse.Namespace, out: Path) -> Any:
    from vitrine.trainer.tracking import MlflowTracker

    try:
        return MlflowTracker(args.mlflow_dir, experiment=args.experiment, run_name=f"text {out.name}")
    except ImportError as exc:
        raise SystemExit(f"train text: {exc}") from None


def summary(result: dict, out: Path) -> dict:
    """Base vs tuned on each check, the headline figures a person compares."""
    keys = [k for k in result["metrics"]["base"] if k.endswith(("ndcg@10", "recall@10"))]
    return {"out": str(out), "seconds": result["training"]["seconds"], "weights_bytes": result["training"]["weights_bytes"],
            **{k: {"base": round(result["metrics"]["base"][k], 4), "tuned": round(result["metrics"]["tuned"][k], 4)}
               for k in keys}}
