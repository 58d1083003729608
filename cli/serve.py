"""`vitrine serve`: bind first (health NOT_SERVING), load the bundle and models, replay the WAL, then serve."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from vitrine.cli.target import TOKEN_ENV
from vitrine.cli.keys import KEYS_ENV

log = logging.getLogger("vitrine")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a bundle, or many tenants, over gRPC")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--bundle", help="bundle directory, or a `current` symlink to follow with --watch")
    where.add_argument("--tenants", metavar="DIR", help="serve every tenant under DIR (one sub-directory each; README "
                                                        "\"Tenants and API keys\")")
    p.add_argument("--reranker", help="cross-encoder directory (from `vitrine train reranker`) or name")
    p.add_argument("--ranker", help="LightGBM ranker directory (from `vitrine train ranker`)")
    p.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                   help="poll --bundle (a symlink) this often and hot-swap when it points elsewhere")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0 binds a free port")
    p.add_argument("--config", help="vitrine.toml (see README, Configuration)")
    p.add_argument("--read-only", action="store_true", help="refuse catalog writes (no WAL)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this HTTP port")
    p.add_argument("--http-port", type=int, default=None,
                   help="also serve the API as JSON over HTTP on this port (README, JSON over HTTP); 0 picks a free one")
    p.add_argument("--judgments", metavar="DIR", help="where the /ui workbench keeps judgments (default: BUNDLE.judgments "
                                                       "beside the bundle; with --tenants, each tenant's DIR/judgments)")
    p.add_argument("--compare", metavar="NAME=DIR", action="append", default=[],
                   help="also load this bundle read-only, for side-by-side columns on /ui (repeatable)")
    p.add_argument("--auth-token", default=None, help=f"shared secret for write RPCs (default: ${TOKEN_ENV} or [catalog])")
    p.add_argument("--keys", metavar="FILE", help=f"API keys file from `vitrine keys create` (default: ${KEYS_ENV}); "
                                                  "every RPC then needs a key of its tenant")
    p.add_argument("--insecure", action="store_true", help="--tenants without --keys: every caller may use every tenant")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve TLS on the port")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA: require client certificates it signed (mTLS)")

    p.set_defaults(handler=cmd_serve)


def check_port(host: str, port: int, flag: str = "--port") -> None:
    """Refuses, with the fix, a port this process cannot listen on, before anything binds or loads: grpc itself
    would log a C-core error and raise a bare RuntimeError. Port 0 (any free port) always binds."""
    if not 0 <= port < 65536:
        raise ValueError(f"{flag} {port} is not a TCP port; give 1-65535, or 0 for a free one.")
    if port == 0:
        return
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ValueError(f"--host {host!r} cannot be resolved ({exc.strerror}); give an address such as 127.0.0.1 or "
                         f"0.0.0.0.") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as grpc binds: a port in TIME_WAIT is free
        try:
            probe.bind(addr)
        except OSError as exc:
            raise ValueError(_bind_failure(host, port, flag, exc.errno, exc.strerror)) from None


def _bind_failure(host: str, port: int, flag: str, code: int | None, reason: str | None = None) -> str:
    if code == errno.EACCES:
        return f"cannot listen on {host}:{port}: ports below 1024 need privileges; choose another with {flag}."
    if code == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}:{port}: {host} is not an address of this machine; check --host."
    if code == errno.EADDRINUSE or code is None:
        return (f"cannot listen on {host}:{port}: the port is in use by another process; stop it, or choose another "
                f"port with {flag}{' (0 picks a free one)' if flag == '--port' else ''}.")
    return f"cannot listen on {host}:{port}: {reason}; choose another with {flag}."


def bind_server(create, host: str, port: int):  # noqa: ANN001, ANN201 - create_server's partial and its VitrineServer
    """create() with grpc's bind failure (a port taken since check_port) as the same one-line error."""
    try:
        return create()
    except RuntimeError as exc:
        if "Failed to bind" not in str(exc):
            raise
        raise ValueError(_bind_failure(host, port, "--port", None)) from None


def keystore(path: str | None):  # noqa: ANN201 - KeyStore | None
    """The API keys file named by --keys or $VITRINE_KEYS_FILE; None when neither is set."""
    from vitrine.server.auth import KeyStore

    path = path or os.environ.get(KEYS_ENV)
    return KeyStore.load(path) if path else None


def check_watch(args: argparse.Namespace) -> None:
    """--watch follows a `current` symlink on a read-only server; refused before anything binds or prints."""
    if args.watch is None:
        return
    if args.tenants:
        raise ValueError("--watch follows one --bundle symlink; a --tenants server swaps a tenant's bundle with the "
                         "Admin Reload RPC (`vitrine retrain --tenant T` sends it), not --watch.")
    if not args.watch > 0:
        raise ValueError(f"--watch takes a positive number of seconds, got {args.watch:g}.")
    if not Path(args.bundle).is_symlink():
        raise ValueError(f"--watch needs --bundle to be a symlink (a `current` pointer), got {args.bundle}, a "
                         f"directory; point one at it (ln -sfn {args.bundle} current) and serve --bundle current.")
    if not args.read_only:
        raise ValueError("--watch swaps bundles, which needs --read-only (live writes go to the serving bundle's WAL); "
                         "add --read-only.")


def single_threaded_kernels(backends: dict[str, str]) -> None:
    """Concurrency comes from requests, not from inside one: FAISS answers each query on one OpenMP thread (a
    single-query IVF scan is too small to split, and idle OpenMP threads spin on a core another request needs), and
    when no model runs on torch (every one on ONNX), torch's remaining work (image preprocessing) uses one thread."""
    import faiss

    faiss.omp_set_num_threads(1)
    if "torch" not in backends.values():
        import torch

        torch.set_num_threads(1)


def serve_tenants(args: argparse.Namespace) -> int:
    """`vitrine serve --tenants DIR`: every tenant under DIR on one port, models shared through one pool."""
    from vitrine.server.admin import TenantManager, tenant_opener
    from vitrine.server.app import ServerOptions, create_server
    from vitrine.server.state import freeze_heap
    from vitrine.server.status import Metrics
    from vitrine.server.tenants import Tenants
    from vitrine.serving.config import VitrineConfig, read_config_dict
    from vitrine.serving.pool import ModelPool

    check_watch(args)
    check_port(args.host, args.port)
    for flag, port in (("--metrics-port", args.metrics_port), ("--http-port", args.http_port)):
        if port is not None:
            check_port(args.host, port, flag)
    if args.compare or args.judgments:
        raise ValueError("--compare and --judgments are for one --bundle; with --tenants, compare two tenants on /ui, and "
                         "each tenant keeps its judgments in its own directory (TENANT/judgments).")
    raw = read_config_dict(args.config)
    config = VitrineConfig.from_dict(raw)
    if args.auth_token or config.catalog.auth_token:
        raise ValueError("--tenants uses API keys per tenant (--keys FILE), not one shared --auth-token.")
    keys = keystore(args.keys)
    if keys is None and not args.insecure:
        raise ValueError(f"--tenants needs API keys (--keys FILE or ${KEYS_ENV}; `vitrine keys create`), or --insecure "
                         "to serve every tenant to every caller (tests, a private network).")
    if keys is None:
        log.warning("--insecure: no API keys; every tenant is open to every caller")
    pool = ModelPool(share=config.encoders.share_models)
    tenants = Tenants()
    manager = TenantManager(args.tenants, tenants, tenant_opener(raw, pool, args.read_only))
    metrics = Metrics()
    if args.metrics_port is not None:
        metrics.serve_http(args.metrics_port, args.host)
    names = manager.load_all()
    single_threaded_kernels({b: v for t in tenants for b, v in t.state.served.backends.items()})
    freeze_heap()
    options = ServerOptions(config.server, metrics=metrics, keys=keys, credentials=_credentials(args), manager=manager)
    served = bind_server(lambda: create_server(tenants, f"{args.host}:{args.port}", options), args.host, args.port)
    log.info("serving %d tenants (%s) on %s:%d", len(names), ", ".join(names), args.host, served.port)
    print(f"listening on {args.host}:{served.port}", flush=True)
    stop_http = start_http_door(args, served)
    _wait_for_signal(config.server.grace_s)
    stop_http()
    served.stop(config.server.grace_s)
    for tenant in list(tenants):
        tenant.close()
    log.info("stopped")
    return 0


def start_http_door(args: argparse.Namespace, served, compare: dict | None = None  # noqa: ANN001 - a VitrineServer
                    ) -> Callable[[], None]:
    """With --http-port, the JSON-over-HTTP app and the /ui workbench over the same servicers, keys and TLS files;
    returns its stop."""
    if args.http_port is None:
        return lambda: None
    from vitrine.server.http import http_app, start_http
    from vitrine.server.workbench import Workbench

    if args.tenants:
        judgments = lambda tenant: Path(tenant.dir) / "judgments"  # noqa: E731
    else:
        fixed = Path(args.judgments) if args.judgments else default_judgments(args.bundle)
        judgments = lambda tenant: fixed  # noqa: E731
    workbench = Workbench(served.search, served.keys, judgments, compare or {}, secure=bool(args.tls_cert))
    server, thread = start_http(http_app(served.search, served.catalog, served.keys, workbench), args.host,
                                args.http_port, args.tls_cert, args.tls_key)
    port = server.servers[0].sockets[0].getsockname()[1]
    scheme = "https" if args.tls_cert else "http"
    print(f"http on {scheme}://{args.host}:{port}", flush=True)
    print(f"workbench on {scheme}://{args.host}:{port}/ui", flush=True)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
    return stop


def default_judgments(bundle: str) -> Path:
    """BUNDLE.judgments beside the bundle: not inside it, since re-indexing replaces the bundle's directory, and not
    in what a `current` symlink points at, since a hot swap moves it."""
    path = Path(bundle).absolute()
    return path.with_name(f"{path.name}.judgments")


def parse_compare(args: argparse.Namespace) -> dict[str, Path]:
    """--compare NAME=DIR flags, checked before anything binds or loads."""
    if args.judgments and args.http_port is None:
        raise ValueError("--judgments is where the /ui workbench keeps grades: add --http-port N.")
    out: dict[str, Path] = {}
    for spec in args.compare:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ValueError(f"--compare {spec!r}: give NAME=DIR, e.g. --compare base=bundles/v1.")
        if name in out:
            raise ValueError(f"--compare: the name {name!r} is given twice.")
        if not (Path(path) / "manifest.json").is_file():
            raise FileNotFoundError(f"--compare {name}: {path} is not a Vitrine bundle (no manifest.json).")
        if args.http_port is None:
            raise ValueError("--compare shows bundles side by side on the /ui page: add --http-port N.")
        out[name] = Path(path).resolve()
    return out


def open_compared(compared: dict[str, Path], loader: Callable) -> dict:
    """Each --compare bundle served read-only as its own one tenant, behind its own Search servicer (the pages'
    columns call it; nothing else can reach it)."""
    from vitrine.server.app import single
    from vitrine.server.search_service import SearchServicer

    out = {}
    for name, path in compared.items():
        log.info("loading %s for comparison: %s", name, path)
        out[name] = SearchServicer(single(loader(str(path), None, None)))
    return out


def _credentials(args: argparse.Namespace):  # noqa: ANN202 - grpc.ServerCredentials | None
    if not (args.tls_cert or args.tls_key):
        if args.tls_client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key.")
        return None
    if not (args.tls_cert and args.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key.")
    from vitrine.server.auth import server_credentials

    return server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)


def _wait_for_signal(grace_s: float, stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining for up to %.0f s", signum, grace_s)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()


def cmd_serve(args: argparse.Namespace) -> int:
    """`vitrine serve` with live updates: binds first (health NOT_SERVING), loads, replays the WAL, then serves."""
    from dataclasses import replace

    from vitrine.server.app import ServerOptions, create_server, single
    from vitrine.server.query_log import QueryLog
    from vitrine.server.state import freeze_heap
    from vitrine.server.status import Metrics
    from vitrine.serving.config import load_config
    from vitrine.serving.tenant import served_loader, start_live

    if args.tenants:
        return serve_tenants(args)
    if not (Path(args.bundle) / "manifest.json").is_file():
        raise FileNotFoundError(f"bundle {args.bundle} does not exist or is not a Vitrine bundle (no manifest.json); "
                                f"build one with `vitrine index --catalog C --out {args.bundle}`")
    check_watch(args)
    check_port(args.host, args.port)
    for flag, port in (("--metrics-port", args.metrics_port), ("--http-port", args.http_port)):
        if port is not None:
            check_port(args.host, port, flag)
    if not args.read_only:
        # Refuse at once, before the models load; the live index takes the lock for good once they have.
        from vitrine.indexer.lock import WriterLock

        WriterLock(Path(args.bundle).resolve()).acquire().release()
    compared = parse_compare(args)
    config = load_config(args.config)
    token = args.auth_token or os.environ.get(TOKEN_ENV) or config.catalog.auth_token
    catalog = replace(config.catalog, auth_token=token or None)
    metrics = Metrics()
    if args.metrics_port is not None:
        metrics.serve_http(args.metrics_port, args.host)
    loader = served_loader(config, args.reranker, args.ranker)
    query_log = QueryLog(config.logs)
    pointer = args.bundle if Path(args.bundle).is_symlink() else None
    keys = keystore(args.keys)
    if keys is not None and token:
        raise ValueError("use API keys (--keys) or one shared --auth-token, not both.")
    # Bound before the models load: health says NOT_SERVING (and searches UNAVAILABLE) until attach.
    tenants = single(None, query_log=query_log, catalog=catalog, loader=loader, pointer=pointer)
    options = ServerOptions(config.server, catalog, metrics=metrics, keys=keys, credentials=_credentials(args))
    served = bind_server(lambda: create_server(tenants, f"{args.host}:{args.port}", options), args.host, args.port)
    bundle = loader(str(Path(args.bundle).resolve()), None, None)
    compare = open_compared(compared, loader)
    single_threaded_kernels(bundle.backends)
    live = None if args.read_only else start_live(bundle, config.live)
    served.attach(bundle, live)
    freeze_heap()  # the loaded bundle and models never become garbage; keep the collector off them
    log.info("serving bundle %s (%d items) on %s:%d%s", bundle.bundle.version, len(bundle.bundle.docstore),
             args.host, served.port, "" if live else " read-only")
    print(f"listening on {args.host}:{served.port}", flush=True)
    stop_http = start_http_door(args, served, compare)
    stop = threading.Event()
    if args.watch:   # validated by check_watch before anything bound
        served.reloader.watch(args.watch, stop)

    _wait_for_signal(config.server.grace_s, stop)
    stop_http()
    served.stop(config.server.grace_s)
    if live is not None:
        live.close()
    served.state.searcher.bundle.close()
    for other in compare.values():
        other.tenants.get("default").state.searcher.bundle.close()
    query_log.close()
    log.info("stopped")
    return 0
