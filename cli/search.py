"""`vitrine search`: a second process querying a running server over gRPC (client side only)."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from vitrine.cli.target import add_target, client_options
from vitrine.ranking.types import Constraint, Stage


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="query a running server (one query, or a batch with --queries)")
    add_target(p, token=False)
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
    p.add_argument("--constraint", choices=[c.value for c in Constraint], default="",
                   help="composed queries: named attribute values")
    p.add_argument("--composed-text-weight", type=float, default=None)
    p.add_argument("--stages", choices=[s.value for s in Stage], default="",
                   help="second stage to apply (default: all loaded)")
    p.add_argument("--rerank-depth", type=int, default=None, help="candidates the second stage re-scores")
    p.add_argument("--log-features", action="store_true", help="ask the server to log this query's candidate features")
    p.add_argument("--queries", help="batch mode: query JSONL (qid, text, image, exclude_ids, filters)")
    p.add_argument("--image-root", help="batch mode: directory that relative query image paths are under")
    p.add_argument("--out", help="batch mode: write the run JSONL here (default stdout)")
    p.add_argument("--timeout", type=float, default=30.0)

    p.set_defaults(handler=cmd_search)


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
    from vitrine.server.client import VitrineClient

    common = dict(
        filters=_parse_pairs(args.filter, "--filter"), price_min=args.price_min, price_max=args.price_max,
        fusion=args.fusion, weights=_parse_pairs(args.weight, "--weight", float),
        sources=[s for s in args.sources.split(",") if s], fields=[f for f in args.fields.split(",") if f],
        constraint=args.constraint, composed_text_weight=args.composed_text_weight,
        stages=args.stages, rerank_depth=args.rerank_depth, log_features=args.log_features,
    )
    with VitrineClient(args.target, timeout_s=args.timeout, **client_options(args)) as client:
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
    from vitrine.ranking.metrics import load_queries

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
    print(json.dumps({"queries": len(queries), "latency_ms": {"p50": round(percentile(latencies, 50), 2),
                                                              "p99": round(percentile(latencies, 99), 2)}}), file=sys.stderr)
    return 0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation (numpy's default), without needing numpy on a client."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
