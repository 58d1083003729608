"""The `vitrine` command: index, serve, search, info, eval, demo. Each handler is a thin wrapper over the library."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import grpc
import numpy as np

log = logging.getLogger("vitrine")

# Modules that add subcommands: each has register(subparsers) and sets `handler` defaults on its parsers.
EXTENSIONS: tuple[str, ...] = ("server.cli_catalog", "trainer.cli", "trainer.cli_rank", "trainer.cli_loop", "trainer.cli_retrain", "server.cli_eval")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="vitrine.toml (see README, Configuration)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitrine", description="Multimodal product search.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index a catalog into a new bundle")
    p.add_argument("--catalog", required=True, help="catalog JSONL (or .csv with --columns)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    _add_config(p)
    p.add_argument("--text-model", help="sentence-transformers name or local dir (default all-MiniLM-L6-v2, offline)")
    p.add_argument("--no-text-vectors", action="store_true", help="BM25 only; skip the dense text index")
    p.add_argument("--clip-model", help="CLIP checkpoint dir (from `vitrine train clip`) or open_clip architecture name")
    p.add_argument("--clip-pretrained", help="open_clip pretrained tag for --clip-model NAME, e.g. laion2b_s34b_b79k (needs a hub)")
    p.add_argument("--columns", help="CSV column map, e.g. id=sku,title=name,attributes.color=colour")
    p.add_argument("--skip-invalid", action="store_true", help="skip bad lines (reported) instead of failing")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("serve", help="serve a bundle over gRPC")
    p.add_argument("--bundle", required=True, help="bundle directory, or a `current` symlink to follow with --watch")
    p.add_argument("--reranker", help="cross-encoder directory (from `vitrine train reranker`) or name")
    p.add_argument("--ranker", help="LightGBM ranker directory (from `vitrine train ranker`)")
    p.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                   help="poll --bundle (a symlink) this often and hot-swap when it points elsewhere")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0 binds a free port")
    _add_config(p)

    p = sub.add_parser("search", help="query a running server (one query, or a batch with --queries)")
    p.add_argument("--target", required=True, help="HOST:PORT")
    p.add_argument("--text", default="")
    p.add_argument("--image", help="path of an image to search with")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="exact-match filter (repeatable)")
    p.add_argument("--price-min", type=float)
    p.add_argument("--price-max", type=float)
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--exclude", default="", help="comma-separated ids to leave out")
    p.add_argument("--fusion", choices=["rrf", "weighted", "weighted_max"], default="")
    p.add_argument("--weight", action="append", default=[], metavar="SOURCE=W", help="fusion weight (repeatable)")
    p.add_argument("--sources", default="", help="comma-separated sources to use, e.g. bm25,text")
    p.add_argument("--fields", default="", help="stored fields to return, e.g. title,price or *")
    p.add_argument("--explain", action="store_true")
    p.add_argument("--constraint", choices=["hard", "soft", "off"], default="", help="composed queries: named attribute values")
    p.add_argument("--composed-text-weight", type=float, default=None)
    p.add_argument("--stages", choices=["first", "cross", "full"], default="", help="second stage to apply (default: all loaded)")
    p.add_argument("--rerank-depth", type=int, default=None, help="candidates the second stage re-scores")
    p.add_argument("--log-features", action="store_true", help="ask the server to log this query's candidate features")
    p.add_argument("--queries", help="batch mode: query JSONL (qid, text, image, exclude_ids, filters)")
    p.add_argument("--image-root", help="batch mode: directory that relative query image paths are under")
    p.add_argument("--out", help="batch mode: write the run JSONL here (default stdout)")
    p.add_argument("--timeout", type=float, default=30.0)

    p = sub.add_parser("info", help="describe the bundle a server is serving")
    p.add_argument("--target", required=True)

    p = sub.add_parser("demo", help="index a catalog, serve it and run example queries")
    p.add_argument("--data", default=None, help="fashion data folder (default ../shared/data/fashion if present)")
    p.add_argument("--workdir", default=".cache/demo")
    import importlib

    for name in EXTENSIONS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from server.logs import setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    # `serve` is handled by server.cli_catalog (it adds the live-update flags), via the parser's `handler`.
    handlers = {"index": cmd_index, "search": cmd_search, "info": cmd_info, "demo": cmd_demo}
    try:
        handler = getattr(args, "handler", None) or handlers[args.command]
        return handler(args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_index(args: argparse.Namespace) -> int:
    from indexer.bundle import IndexerConfig, build_bundle
    from indexer.catalog import parse_column_map, read_catalog
    from server.config import load_config

    config = load_config(args.config)
    t0 = time.perf_counter()
    items, errors = read_catalog(args.catalog, skip_invalid=args.skip_invalid, column_map=parse_column_map(args.columns))
    if errors:
        print(f"skipped {len(errors)} invalid line(s):", file=sys.stderr)
        for e in errors[:50]:
            print(f"  {e}", file=sys.stderr)
    if not items:
        raise ValueError(f"catalog {args.catalog} has no valid items")
    encoder = None
    if not args.no_text_vectors:
        from encoders.text import SentenceTransformerEncoder

        encoder = SentenceTransformerEncoder(args.text_model or config.encoders.text_model, device=config.encoders.device)
    clip = None
    if args.clip_model:
        from encoders.clip import ClipEncoder, is_checkpoint_dir

        name = str(Path(args.clip_model).resolve()) if is_checkpoint_dir(args.clip_model) else args.clip_model
        clip = ClipEncoder(name, pretrained=args.clip_pretrained, device=config.encoders.device)
    manifest = build_bundle(
        items, args.out, encoder,
        IndexerConfig(batch_size=config.encoders.batch_size, ann=config.index, bm25=config.bm25),
        clip_encoder=clip, catalog_dir=Path(args.catalog).resolve().parent,
        catalog_path=str(Path(args.catalog).resolve()), config_dict=config.to_dict(), force=args.force,
        progress=not args.quiet,
    )
    if manifest["counts"].get("broken_images"):
        print(f"{manifest['counts']['broken_images']} image(s) could not be read (listed in manifest.json), e.g.:",
              file=sys.stderr)
        for b in manifest["broken_images"][:10]:
            print(f"  item {b['id']}: {b['reason']}", file=sys.stderr)
    summary = {"bundle": str(args.out), "bundle_version": manifest["bundle_version"], "items": manifest["counts"]["items"],
               "skipped_lines": len(errors), "broken_images": manifest["counts"].get("broken_images", 0), "vectors": {k: {"factory": v["factory"], "count": v["count"]} for k, v in manifest["vectors"].items()},
               "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(summary))
    return 0


def load_searcher(bundle_path: str, config_path: str | None, reranker: str | None = None,
                  ranker: str | None = None):  # -> (Searcher, VitrineConfig)
    from server.config import load_config

    config = load_config(config_path)
    return build_searcher(bundle_path, config, reranker, ranker), config


def build_searcher(bundle_path: str, config, reranker: str | None = None, ranker: str | None = None):  # -> Searcher
    """Opens a bundle with its encoders and the optional second-stage models, warmed up."""
    from indexer.bundle import Bundle
    from ranking.pipeline import Searcher

    bundle = Bundle(bundle_path, ann=config.index)
    encoder = None
    if "text" in bundle.vectors:
        from encoders.text import SentenceTransformerEncoder

        encoder = SentenceTransformerEncoder(bundle.manifest["models"]["text"]["name"], device=config.encoders.device)
        encoder.encode_texts(["warm up"])  # the first call pays one-off costs; not a user's query
    clip = None
    if "clip" in bundle.manifest.get("models", {}):
        from encoders.clip import ClipEncoder

        clip = ClipEncoder(bundle.manifest["models"]["clip"]["name"], device=config.encoders.device)
        clip.encode_texts(["warm up"])
    cross = ltr = None
    if reranker:
        from ranking.rerank import CrossEncoderReranker

        cross = CrossEncoderReranker(reranker, config.rerank, device=config.encoders.device)
        cross.score("warm up", ["warm up"])
    if ranker:
        from ranking.ltr import LtrRanker

        ltr = LtrRanker(ranker)
        if ltr.meta.get("reranker") and cross is None:
            log.warning("ranker %s was trained with cross-encoder scores but no --reranker is loaded; "
                        "its cross_* features will be missing", ranker)
    return Searcher(bundle, encoder, config.search, clip_encoder=clip, reranker=cross, ranker=ltr, rerank=config.rerank)


def _parse_pairs(pairs: list[str], flag: str, cast=str) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{flag} {pair!r} must look like KEY=VALUE")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = cast(value.strip())
        except ValueError:
            raise ValueError(f"{flag} {pair!r}: {value!r} is not a number") from None
    return out


def _read_image(path: str | None) -> bytes:
    if not path:
        return b""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"--image {path}: {exc.strerror}") from None


def cmd_search(args: argparse.Namespace) -> int:
    from server.client import VitrineClient

    common = dict(
        filters=_parse_pairs(args.filter, "--filter"), price_min=args.price_min, price_max=args.price_max,
        fusion=args.fusion, weights=_parse_pairs(args.weight, "--weight", float),
        sources=[s for s in args.sources.split(",") if s], fields=[f for f in args.fields.split(",") if f],
        constraint=args.constraint, composed_text_weight=args.composed_text_weight,
        stages=args.stages, rerank_depth=args.rerank_depth, log_features=args.log_features,
    )
    with VitrineClient(args.target, timeout_s=args.timeout) as client:
        if args.queries:
            return _batch_search(client, args, common)
        result = client.search(args.text, _read_image(args.image), k=args.k or 10, offset=args.offset,
                               exclude_ids=[i for i in args.exclude.split(",") if i], explain=args.explain, **common)
        for hit in result.hits:
            row = {"id": hit.id, "score": round(hit.score, 6), "sources": {s: round(v, 6) for s, v in hit.sources.items()}}
            if hit.fields:
                row["fields"] = hit.fields
            if hit.explanation:
                row["explain"] = hit.explanation
            if hit.contributions:
                row["contributions"] = {k: round(v, 6) for k, v in hit.contributions.items()}
            print(json.dumps(row, ensure_ascii=False))
        print(json.dumps({"total_candidates": result.total_candidates, "bundle_version": result.bundle_version,
                          "model_versions": result.model_versions, "stages": result.stages,
                          "took_ms": round(result.took_ms, 2), "request_id": result.request_id}), file=sys.stderr)
    return 0


def _batch_search(client, args: argparse.Namespace, common: dict) -> int:
    from ranking.metrics import load_queries

    queries = load_queries(args.queries)
    root = Path(args.image_root) if args.image_root else Path(args.queries).resolve().parent.parent
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    latencies = []
    try:
        for q in queries:
            image = b""
            if q.get("image"):
                p = Path(q["image"])
                image = _read_image(str(p if p.is_absolute() else root / p))
            filters = {**common["filters"], **(q.get("filters") or {})}
            t0 = time.perf_counter()
            result = client.search(q.get("text", ""), image, k=args.k or 100, exclude_ids=q.get("exclude_ids", []),
                                   **{**common, "filters": filters})
            latencies.append((time.perf_counter() - t0) * 1e3)
            out.write(json.dumps({"qid": q["qid"], "hits": [{"id": h.id, "score": h.score} for h in result.hits]}) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    lat = np.array(latencies)
    print(json.dumps({"queries": len(queries), "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2),
                                                              "p99": round(float(np.percentile(lat, 99)), 2)}}), file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from server.client import VitrineClient

    with VitrineClient(args.target) as client:
        print(json.dumps(client.info(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from server.demo import run_demo

    return run_demo(args.data, Path(args.workdir))


if __name__ == "__main__":
    sys.exit(main())
