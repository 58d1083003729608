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
    shop = p.add_argument_group("filters, facets, sorting and rules (an empty --text with any of these is a browse)")
    shop.add_argument("--any", action="append", default=[], metavar="FIELD=V1,V2", help="the field has one of the values")
    shop.add_argument("--none", action="append", default=[], metavar="FIELD=V1,V2", help="the field has none of them")
    shop.add_argument("--range", action="append", default=[], metavar="FIELD=MIN..MAX",
                      help="numeric range, either end may be left out (rating=4.., price=..50)")
    shop.add_argument("--has", action="append", default=[], metavar="FIELD", help="the item has the field")
    shop.add_argument("--missing", action="append", default=[], metavar="FIELD", help="the item lacks the field")
    shop.add_argument("--facet", action="append", default=[], metavar="FIELD[:E1,E2]",
                      help="count the field's values (numeric: buckets at the given edges)")
    shop.add_argument("--sort", default="", metavar="[-]FIELD",
                      help="sort by a numeric field; --sort=-FIELD descending (with '=': argparse reads -FIELD as a flag)")
    shop.add_argument("--highlight", action="store_true", help="title and description snippets with matches marked")
    shop.add_argument("--like", default="", metavar="ID", help="more like this item")
    shop.add_argument("--boost", action="append", default=[], metavar="FIELD=VALUE*F|+A",
                      help="multiply (*2, *0.5 buries) or add to the fused score of items with that value")
    shop.add_argument("--pin", action="append", default=[], metavar="ID@POSITION", help="show ID at a position (1-based)")
    shop.add_argument("--hide", default="", help="comma-separated ids never to show")
    shop.add_argument("--min-score", type=float, default=None, help="drop hits whose fused score is below")
    shop.add_argument("--no-rules", action="store_true", help="ignore the server's configured [search.rules]")
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


def _number(text: str, flag: str) -> float | None:
    try:
        return float(text) if text.strip() else None
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not a number") from None


def _boost(spec: str) -> dict:
    """"brand=Acme*2" / "color=red+0.1" / "color=red*0.5+0.1" -> a Boost as the proto's JSON."""
    if "=" not in spec:
        raise ValueError(f"--boost {spec!r} must look like FIELD=VALUE*FACTOR or FIELD=VALUE+ADD")
    field, rest = spec.split("=", 1)
    out: dict = {"field": field.strip()}
    value, _, add = rest.partition("+")
    value, _, factor = value.partition("*")
    if factor:
        out["factor"] = _number(factor, f"--boost {spec!r}")
    if add:
        out["add"] = _number(add, f"--boost {spec!r}")
    return {**out, "value": value.strip()}


def shop_options(args: argparse.Namespace) -> dict:
    """The search flags of the shop features as VitrineClient.search keywords."""
    # One entry per flag: --any color=red --any color=blue asks for both conditions (AND), as written.
    where = [{"field": f, "any_of": v.split(",")} for a in args.any for f, v in _parse_pairs([a], "--any").items()]
    where += [{"field": f, "none_of": v.split(",")} for a in args.none for f, v in _parse_pairs([a], "--none").items()]
    for field, span in _parse_pairs(args.range, "--range").items():
        lo, sep, hi = span.partition("..")
        if not sep:
            raise ValueError(f"--range {field}={span!r} must look like FIELD=MIN..MAX (either end may be empty)")
        bounds = {"min": _number(lo, "--range"), "max": _number(hi, "--range")}
        where.append({"field": field, **{k: v for k, v in bounds.items() if v is not None}})
    where += [{"field": f, "exists": True} for f in args.has] + [{"field": f, "exists": False} for f in args.missing]
    facets = []
    for spec in args.facet:
        field, _, edges = spec.partition(":")
        facets.append({"field": field, **({"ranges": [_number(e, "--facet") for e in edges.split(",")]} if edges else {})})
    pins = {}
    for spec in args.pin:
        item, sep, pos = spec.rpartition("@")
        if not sep or not pos.isdigit():
            raise ValueError(f"--pin {spec!r} must look like ID@POSITION, e.g. sku-1@1")
        pins[item] = int(pos)
    return dict(where=where, facets=facets, sort=args.sort, highlight=args.highlight, like_id=args.like,
                boosts=[_boost(b) for b in args.boost], pins=pins, hide_ids=[i for i in args.hide.split(",") if i],
                min_score=args.min_score, no_rules=args.no_rules)


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
    shop = shop_options(args)
    with VitrineClient(args.target, timeout_s=args.timeout, **client_options(args)) as client:
        if args.queries:
            return _batch_search(client, args, {**common, **shop})
        result = client.search(args.text, _read_image(args.image), k=args.k or 10, offset=args.offset,
                               exclude_ids=[i for i in args.exclude.split(",") if i], explain=args.explain, **common,
                               **shop)
        for hit in result.hits:
            row = {"id": hit.id, "score": round(hit.score, 6), "sources": {s: round(v, 6) for s, v in hit.sources.items()}}
            if hit.sort_value is not None:   # NaN (no value) is not JSON: null
                row["sort_value"] = hit.sort_value if hit.sort_value == hit.sort_value else None
            row.update({"highlights": [h["html"] for h in hit.highlights], "lexical_match": hit.lexical_match}
                       if hit.lexical_match is not None else {})
            row.update({"rules": hit.rules} if hit.rules else {})
            if hit.fields:
                row["fields"] = hit.fields
            if hit.explanation:
                row["explain"] = hit.explanation
            if hit.contributions:
                row["contributions"] = {k: round(v, 6) for k, v in hit.contributions.items()}
            print(json.dumps(row, ensure_ascii=False))
        if result.facets:  # one last line, only when facets were asked for
            print(json.dumps({"facets": result.facets, "facet_scope": result.facet_scope}, ensure_ascii=False))
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
