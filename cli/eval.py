"""`vitrine eval` (quality and latency of a served bundle, with --ablate per source/fusion/stage) and `vitrine eval models`."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitrine.cli.judgments import add_judgments_option, use_judgments

if TYPE_CHECKING:
    from vitrine.ranking.evaluation import EvalReport, Variant


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a served bundle on queries + qrels (nDCG/MRR/Recall@k, latency)")
    p.add_argument("--queries", help="query JSONL (qid, text, image, exclude_ids, filters)")
    p.add_argument("--qrels", help="BEIR qrels TSV (query-id, corpus-id, grade)")
    add_judgments_option(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--target", help="HOST:PORT of a running `vitrine serve`")
    where.add_argument("--bundle", help="bundle directory; served in-process on a free port for the run")
    p.add_argument("--tenant", help="with --target: the tenant to evaluate (its key in $VITRINE_AUTH_TOKEN)")
    p.add_argument("--config", help="vitrine.toml used with --bundle")
    p.add_argument("--reranker", help="with --bundle: cross-encoder directory to serve")
    p.add_argument("--ranker", help="with --bundle: LightGBM ranker directory to serve")
    p.add_argument("--k", type=int, default=100, help="hits requested per query (metrics go up to @100)")
    p.add_argument("--ablate", action="store_true", help="also each source alone, each fusion method and each stage setting")
    p.add_argument("--ablate-stages", action="store_true", help="only each stage setting (first, cross, full), in one run")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--check-ranx", action="store_true", help="recompute every metric with ranx on the same run and report the largest difference")
    p.add_argument("--out", help="write the default variant's run (JSONL) here; with --ablate, other variants go beside it")
    p.add_argument("--image-root", help="directory relative query image paths are under (default: the data folder)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(handler=cmd_eval)

    msub = p.add_subparsers(dest="eval_command")
    m = msub.add_parser("models", help="compare candidate text encoders on a catalog: quality, speed, size, memory")
    m.add_argument("--catalog", required=True)
    m.add_argument("--queries")
    m.add_argument("--qrels")
    add_judgments_option(m)
    m.add_argument("--candidates", required=True, help="comma-separated sentence-transformers names or local directories")
    m.add_argument("--k", type=int, default=100)
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    m.add_argument("--general", help="flickr8k captions.txt: also measure the general check (caption -> other captions "
                                     "of its photo, Recall@10, on the photos `vitrine train text` holds out)")
    m.add_argument("--plot", help="write a PNG of nDCG@10 against query latency here")
    m.add_argument("--json", action="store_true")
    m.add_argument("--markdown", action="store_true")
    m.set_defaults(handler=cmd_eval_models)


# ---- vitrine eval ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(args: argparse.Namespace) -> Iterator[str]:
    """Yields a HOST:PORT: the --target, or an in-process server over --bundle stopped on exit."""
    if args.target:
        yield args.target
        return
    from vitrine.server.app import ServerOptions, create_server, single
    from vitrine.serving.assemble import open_served
    from vitrine.serving.config import load_config

    if not (Path(args.bundle) / "manifest.json").is_file():
        raise FileNotFoundError(f"bundle {args.bundle} does not exist or is not a Vitrine bundle (no manifest.json)")
    config = load_config(args.config)
    opened = open_served(args.bundle, config, reranker=getattr(args, "reranker", None), ranker=getattr(args, "ranker", None))
    served = create_server(single(opened), "127.0.0.1:0", ServerOptions(config.server))
    try:
        yield f"127.0.0.1:{served.port}"
    finally:
        served.stop(0)
        opened.bundle.close()


def served_plan(info: Mapping[str, Any], known_sources: Sequence[str]) -> tuple[list[str], dict[str, list[Any]]]:
    """Candidate sources and stage settings for a served bundle.

    Sources: the manifest's "sources" list when it has one, else every source the library knows plus one per
    vector index (the caller probes each and keeps those the server answers). Stages: the manifest's "stages"
    mapping of request option -> settings, e.g. {"rerank_depth": [0, 50]}.
    """
    manifest = info.get("manifest", {})
    sources = manifest.get("sources") or ["bm25", *known_sources, *manifest.get("vectors", {})]
    stages = {str(k): list(v) for k, v in (manifest.get("stages") or {}).items()}
    return list(dict.fromkeys(sources)), stages


def make_search(client: Any, k: int, image_root: Path) -> Any:
    """The SearchFn over a VitrineClient: one Search RPC per query, with the variant's sources/fusion/options."""
    def search(q: Mapping[str, Any], variant: Variant) -> list[tuple[str, float]]:
        image = b""
        if q.get("image"):
            p = Path(q["image"])
            image = (p if p.is_absolute() else image_root / p).read_bytes()
        result = client.search(q.get("text", ""), image, k=k, exclude_ids=q.get("exclude_ids") or [],
                               filters=q.get("filters") or {}, sources=list(variant.sources), fusion=variant.fusion,
                               **variant.options)
        return [(h.id, h.score) for h in result.hits]

    return search


def _runnable(client_search: Any, first_query: Mapping[str, Any], variant: Variant) -> str | None:
    """None if the server answers this variant, else why not (e.g. a source this query type cannot use)."""
    import grpc

    try:
        client_search(first_query, variant)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
            return f"{exc.code().name}: {exc.details()}"
        raise
    except TypeError as exc:  # a stage option this client does not know yet
        return str(exc)
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    from vitrine.ranking.evaluation import (
        DEFAULT_VARIANT,
        Variant,
        ablation_plan,
        max_abs_diff,
        ranx_metrics,
        run_queries,
        score_run,
        write_run,
    )
    from vitrine.ranking.metrics import load_qrels, load_queries
    from vitrine.server.client import FUSION, VitrineClient

    use_judgments(args, "vitrine eval")  # or the `models` subcommand
    if not args.target and not args.bundle:
        raise ValueError("vitrine eval needs --target HOST:PORT or --bundle DIR.")
    if args.k < 1:
        raise ValueError(f"--k must be a positive integer, got {args.k}.")
    queries, qrels = load_queries(args.queries), load_qrels(args.qrels)
    if not queries:
        raise ValueError(f"{args.queries} has no queries.")
    image_root = Path(args.image_root) if args.image_root else Path(args.queries).resolve().parent.parent
    reports: list[EvalReport] = []
    skipped: dict[str, str] = {}
    from vitrine.cli.target import TOKEN_ENV

    # A server with API keys: the key comes from $VITRINE_AUTH_TOKEN, as for every command that calls a server.
    token = (os.environ.get(TOKEN_ENV) or None) if args.target else None
    with serving(args) as target, VitrineClient(target, timeout_s=args.timeout, token=token, tenant=args.tenant) as client:
        client.wait_ready()
        info = client.info()
        search = make_search(client, args.k, image_root)
        plan = [DEFAULT_VARIANT]
        if args.ablate_stages:
            from vitrine.ranking.pipeline import SOURCES

            plan = ablation_plan([], [], served_plan(info, SOURCES)[1])
        elif args.ablate:
            from vitrine.ranking.pipeline import SOURCES

            candidates, stages = served_plan(info, SOURCES)
            sources = []
            for s in candidates:
                why = _runnable(search, queries[0], Variant(f"{s} only", sources=(s,)))
                if why is None:
                    sources.append(s)
                else:
                    skipped[f"{s} only"] = why
            plan = ablation_plan(sources, [f for f in FUSION if f], stages)
        for variant in plan:
            why = _runnable(search, queries[0], variant)
            if why is not None:
                skipped[variant.name] = why
                continue
            qrun = run_queries(queries, search, variant)
            report = score_run(qrun, qrels)
            if args.check_ranx:
                report.extra["ranx_max_abs_diff"] = max_abs_diff(report.metrics, ranx_metrics(qrun.ranked(), qrels))
            if qrun.errors:
                report.extra["first_error"] = next(iter(qrun.errors.values()))
            reports.append(report)
            if args.out:
                write_run(_run_path(Path(args.out), variant), qrun.run)
    _print_eval(args, reports, skipped, info)
    return 0


def _run_path(out: Path, variant: Variant) -> Path:
    from vitrine.ranking.evaluation import DEFAULT_VARIANT

    if variant is DEFAULT_VARIANT or variant.name == DEFAULT_VARIANT.name:
        return out
    slug = "".join(c if c.isalnum() else "-" for c in variant.name).strip("-")
    return out.with_name(f"{out.stem}.{slug}{out.suffix}")


def _print_eval(args: argparse.Namespace, reports: list[EvalReport], skipped: dict[str, str], info: Mapping[str, Any]) -> None:
    from vitrine.ranking.evaluation import format_markdown, format_table, reports_to_json

    context = {"queries": args.queries, "qrels": args.qrels, "bundle_version": info.get("bundle_version"), "k": args.k,
               "skipped_variants": skipped}
    if args.json:
        print(reports_to_json(reports, **context))
        return
    print(format_markdown(reports) if args.markdown else format_table(reports))
    for r in reports:
        if "ranx_max_abs_diff" in r.extra:
            print(f"ranx agreement [{r.name}]: max |diff| over 12 metrics = {r.extra['ranx_max_abs_diff']:.2e}")
        if "first_error" in r.extra:
            print(f"errors [{r.name}]: {r.errors}, first: {r.extra['first_error']}", file=sys.stderr)
    for name, why in skipped.items():
        print(f"skipped [{name}]: {why}", file=sys.stderr)


# ---- vitrine eval models ---------------------------------------------------------------------------------


def cmd_eval_models(args: argparse.Namespace) -> int:
    from vitrine.encoders.text import SentenceTransformerEncoder
    from vitrine.indexer.catalog import read_catalog
    from vitrine.ranking.evaluation import evaluate_encoder, format_models, reports_to_json
    from vitrine.ranking.metrics import load_qrels, load_queries

    use_judgments(args, "vitrine eval models")
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    if not candidates:
        raise ValueError("--candidates must name at least one encoder.")
    items, _ = read_catalog(args.catalog)
    queries, qrels = load_queries(args.queries), load_qrels(args.qrels)
    photo_only = [q for q in queries if not q.get("text")]
    if photo_only:  # e.g. photo queries of a judged set: a text encoder has nothing to encode for them
        print(f"eval models: {len(photo_only)} queries without text left out (a text encoder cannot score them)",
              file=sys.stderr)
        queries = [q for q in queries if q.get("text")]
    check = general_check(args.general) if args.general else None
    reports = []
    for name in candidates:
        loaded: dict[str, Any] = {}

        def load(n: str = name) -> Any:  # loaded inside evaluate_encoder, which times it and counts its memory
            loaded["encoder"] = SentenceTransformerEncoder(n, device=args.device)
            return loaded["encoder"]

        report = evaluate_encoder(name, load, items, queries, qrels, k=args.k, batch_size=args.batch_size)
        encoder = loaded["encoder"]
        report.extra["weights_mib"] = model_size(encoder.model) / 2**20
        if check is not None:
            report.extra["general_recall@10"] = check(encoder)
        reports.append(report)
    if args.plot:
        plot_models(reports, Path(args.plot))
    if args.json:
        print(reports_to_json(reports, catalog=args.catalog, queries=args.queries, plot=args.plot))
    else:
        print(format_models(reports, markdown=args.markdown))
    return 0


def model_size(model: Any) -> int:
    """Bytes of the weights a model holds in memory (base and adapter together)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def general_check(captions_path: str) -> Callable[[Any], float]:
    """The general check of `vitrine train text` (same held-out photos, same seed): Recall@10 of a photo's other
    captions for its first caption, among all held-out captions."""
    import numpy as np

    from vitrine.trainer.text import TextTrainConfig
    from vitrine.trainer.text_pairs import caption_check, read_captions, split_captions

    defaults = TextTrainConfig()
    captions = read_captions(captions_path)
    _, held = split_captions(captions, defaults.general_holdout, defaults.seed)
    queries, corpus, relevant = caption_check(captions, held)
    qids, dids = list(queries), list(corpus)

    def recall(encoder: Any) -> float:
        xq = encoder.encode_texts([queries[q] for q in qids])  # (Q, D), unit rows
        xd = encoder.encode_texts([corpus[d] for d in dids])   # (N, D)
        top = np.argsort(-(xq @ xd.T), axis=1)[:, :10]
        return float(np.mean([len({dids[j] for j in row} & relevant[q]) / len(relevant[q]) for q, row in zip(qids, top)]))

    return recall


def plot_models(reports: list[EvalReport], path: Path) -> None:
    """nDCG@10 against p50 query latency (encode + search), one labelled point per candidate."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'vitrine-search[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for r in reports:
        ax.scatter(r.latency_ms["p50"], r.metrics["ndcg@10"])
        ax.annotate(f"{Path(r.name).name} ({r.extra['dim']}d)", (r.latency_ms["p50"], r.metrics["ndcg@10"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("query latency p50 (ms, encode + search)")
    ax.set_ylabel("nDCG@10")
    ax.set_title("Candidate encoders: quality vs latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
