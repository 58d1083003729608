"""`vitrine serve`: bind first (health NOT_SERVING), load the bundle and models, replay the WAL, then serve."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from vitrine.server.client import TOKEN_ENV

log = logging.getLogger("vitrine")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a bundle over gRPC")
    p.add_argument("--bundle", required=True, help="bundle directory, or a `current` symlink to follow with --watch")
    p.add_argument("--reranker", help="cross-encoder directory (from `vitrine train reranker`) or name")
    p.add_argument("--ranker", help="LightGBM ranker directory (from `vitrine train ranker`)")
    p.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                   help="poll --bundle (a symlink) this often and hot-swap when it points elsewhere")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0 binds a free port")
    p.add_argument("--config", help="vitrine.toml (see README, Configuration)")
    p.add_argument("--read-only", action="store_true", help="refuse catalog writes (no WAL)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this HTTP port")
    p.add_argument("--auth-token", default=None, help=f"shared secret for write RPCs (default: ${TOKEN_ENV} or [catalog])")

    p.set_defaults(handler=cmd_serve)


def single_threaded_kernels(backends: dict[str, str]) -> None:
    """Concurrency comes from requests, not from inside one: FAISS answers each query on one OpenMP thread (a
    single-query IVF scan is too small to split, and idle OpenMP threads spin on a core another request needs), and
    when no model runs on torch (every one on ONNX), torch's remaining work (image preprocessing) uses one thread."""
    import faiss

    faiss.omp_set_num_threads(1)
    if "torch" not in backends.values():
        import torch

        torch.set_num_threads(1)


def cmd_serve(args: argparse.Namespace) -> int:
    """`vitrine serve` with live updates: binds first (health NOT_SERVING), loads, replays the WAL, then serves."""
    from dataclasses import replace

    from vitrine.cli.config import load_config, searcher_for
    from vitrine.indexer.live import LiveIndex
    from vitrine.server.app import create_server
    from vitrine.server.query_log import QueryLog
    from vitrine.server.state import freeze_heap
    from vitrine.server.status import Metrics

    if not (Path(args.bundle) / "manifest.json").is_file():
        raise FileNotFoundError(f"bundle {args.bundle} does not exist or is not a Vitrine bundle (no manifest.json); "
                                f"build one with `vitrine index --catalog C --out {args.bundle}`")
    config = load_config(args.config)
    token = args.auth_token or os.environ.get(TOKEN_ENV) or config.catalog.auth_token
    catalog = replace(config.catalog, auth_token=token or None)
    metrics = Metrics()
    if args.metrics_port is not None:
        metrics.serve_http(args.metrics_port, args.host)
    models = {"reranker": args.reranker, "ranker": args.ranker}

    def loader(bundle: str, reranker: str | None, ranker: str | None):  # noqa: ANN202 - a Searcher
        # A reload that names no second-stage model keeps the one being served.
        models.update({k: v for k, v in (("reranker", reranker), ("ranker", ranker)) if v})
        return searcher_for(bundle, config, models["reranker"], models["ranker"])

    query_log = QueryLog(config.logs)
    pointer = args.bundle if Path(args.bundle).is_symlink() else None
    served = create_server(None, f"{args.host}:{args.port}", config.server, catalog=catalog, metrics=metrics,
                           query_log=query_log, loader=loader, pointer=pointer)
    searcher = searcher_for(str(Path(args.bundle).resolve()), config, args.reranker, args.ranker)
    single_threaded_kernels(searcher.backends)
    live = None
    if not args.read_only:
        # Documents skip the query micro-batcher and its cache (long texts would pad the short queries batched beside them).
        live = LiveIndex(searcher.bundle, getattr(searcher.text_encoder, "encoder", searcher.text_encoder), config.live)
        live.start()
    served.attach(searcher, live)
    freeze_heap()  # the loaded bundle and models never become garbage; keep the collector off them
    log.info("serving bundle %s (%d items) on %s:%d%s", searcher.bundle.version, len(searcher.bundle.docstore),
             args.host, served.port, "" if live else " read-only")
    print(f"listening on {args.host}:{served.port}", flush=True)
    stop = threading.Event()
    if args.watch:
        if pointer is None:
            raise ValueError(f"--watch needs --bundle to be a symlink (a `current` pointer), got {args.bundle}")
        if live is not None:
            raise ValueError("--watch swaps bundles, which needs --read-only (live writes go to the serving bundle's WAL)")
        served.reloader.watch(args.watch, stop)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining for up to %.0f s", signum, config.server.grace_s)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    served.stop(config.server.grace_s)
    if live is not None:
        live.close()
    served.state.searcher.bundle.close()
    query_log.close()
    log.info("stopped")
    return 0
