"""`vitrine upsert | delete | get | snapshot`, and the live-update flags and handler of `vitrine serve`."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import grpc

from indexer.catalog import Item, LineError, iter_jsonl
from proto.vitrine.v1 import search_pb2, search_pb2_grpc

log = logging.getLogger("vitrine")
TOKEN_ENV = "VITRINE_AUTH_TOKEN"


def item_to_proto(item: Item) -> search_pb2.Item:
    msg = search_pb2.Item(id=item.id, title=item.title, description=item.description, category=item.category,
                          attributes=dict(item.attributes), image_uri=item.image or "")
    if item.price is not None:
        msg.price = item.price
    return msg


class CatalogClient:
    """Blocking client for the Catalog service; raises grpc.RpcError with the server's status and message."""

    def __init__(self, target: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = search_pb2_grpc.CatalogStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CatalogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upsert(self, requests: Iterable[search_pb2.UpsertRequest], timeout_s: float | None = None) -> Iterator[search_pb2.UpsertAck]:
        """Streams requests and yields each ack as the server makes the write durable."""
        return self.stub.Upsert(iter(requests), metadata=self.metadata, timeout=timeout_s)

    def upsert_items(self, items: Iterable[Item]) -> Iterator[search_pb2.UpsertAck]:
        return self.upsert(search_pb2.UpsertRequest(item=item_to_proto(it)) for it in items)

    def patch(self, item_id: str, price: float | None = None, attributes: dict[str, str] | None = None) -> search_pb2.UpsertAck:
        patch = search_pb2.ItemPatch(id=item_id, attributes=attributes or {})
        if price is not None:
            patch.price = price
        return next(iter(self.upsert([search_pb2.UpsertRequest(patch=patch)], self.timeout_s)))

    def delete(self, ids: Sequence[str]) -> int:
        return self.stub.Delete(search_pb2.DeleteRequest(ids=list(ids)), metadata=self.metadata, timeout=self.timeout_s).deleted

    def get(self, ids: Sequence[str]) -> list[dict]:
        resp = self.stub.Get(search_pb2.GetRequest(ids=list(ids)), metadata=self.metadata, timeout=self.timeout_s)
        return [json.loads(s) for s in resp.items_json]

    def snapshot(self, out_dir: str) -> search_pb2.SnapshotResponse:
        return self.stub.Snapshot(search_pb2.SnapshotRequest(out_dir=out_dir), metadata=self.metadata, timeout=600.0)


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="HOST:PORT")
    p.add_argument("--token", default=None, help=f"shared secret for write RPCs (default: ${TOKEN_ENV})")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upsert", help="stream catalog items (JSONL) to a running server; prints `ack ID` per durable write")
    _add_target(p)
    p.add_argument("--catalog", required=True, help="items as JSONL, one catalog object per line")
    p.add_argument("--patch", action="store_true", help="lines are partial updates: {id, price?, attributes?}")
    p.set_defaults(handler=cmd_upsert)

    p = sub.add_parser("delete", help="delete items by id from a running server")
    _add_target(p)
    p.add_argument("--ids", required=True, help="comma-separated ids")
    p.set_defaults(handler=cmd_delete)

    p = sub.add_parser("get", help="print stored items by id as JSON lines")
    _add_target(p)
    p.add_argument("--ids", required=True, help="comma-separated ids")
    p.set_defaults(handler=cmd_get)

    p = sub.add_parser("snapshot", help="write a consistent copy of the live index to a directory on the server")
    _add_target(p)
    p.add_argument("--out", required=True, help="directory to create (on the server's machine)")
    p.set_defaults(handler=cmd_snapshot)

    serve = sub.choices["serve"]
    serve.add_argument("--read-only", action="store_true", help="refuse catalog writes (no WAL)")
    serve.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this HTTP port")
    serve.add_argument("--auth-token", default=None, help=f"shared secret for write RPCs (default: ${TOKEN_ENV} or [catalog])")
    serve.set_defaults(handler=cmd_serve_live)


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get(TOKEN_ENV) or None


def _ids(spec: str) -> list[str]:
    ids = [i.strip() for i in spec.split(",") if i.strip()]
    if not ids:
        raise ValueError("--ids must list at least one id")
    return ids


def _patch_requests(path: Path) -> Iterator[search_pb2.UpsertRequest]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                patch = search_pb2.ItemPatch(id=str(obj["id"]), attributes={k: str(v) for k, v in (obj.get("attributes") or {}).items()})
                if obj.get("price") is not None:
                    patch.price = float(obj["price"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}: line {lineno}: not a patch object ({exc})") from None
            yield search_pb2.UpsertRequest(patch=patch)


def cmd_upsert(args: argparse.Namespace) -> int:
    path = Path(args.catalog)
    if not path.is_file():
        raise FileNotFoundError(f"catalog {path} does not exist")
    if args.patch:
        requests = list(_patch_requests(path))
    else:
        rows = list(iter_jsonl(path))
        errors = [r for _, r in rows if isinstance(r, LineError)]
        if errors:
            raise ValueError(f"{path}: {len(errors)} invalid line(s):\n  " + "\n  ".join(str(e) for e in errors[:20]))
        requests = [search_pb2.UpsertRequest(item=item_to_proto(r)) for _, r in rows]
    with CatalogClient(args.target, _token(args)) as client:
        for ack in client.upsert(requests):
            print(f"ack {ack.id}", flush=True)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with CatalogClient(args.target, _token(args)) as client:
        print(json.dumps({"deleted": client.delete(_ids(args.ids))}))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with CatalogClient(args.target, _token(args)) as client:
        for item in client.get(_ids(args.ids)):
            print(json.dumps(item, ensure_ascii=False))
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    with CatalogClient(args.target, _token(args)) as client:
        resp = client.snapshot(args.out)
    print(json.dumps({"path": resp.path, "bundle_version": resp.bundle_version, "items": resp.items}))
    return 0


def cmd_serve_live(args: argparse.Namespace) -> int:
    """`vitrine serve` with live updates: binds first (health NOT_SERVING), loads, replays the WAL, then serves."""
    from dataclasses import replace

    from indexer.live import LiveIndex
    from server.cli import build_searcher
    from server.config import load_config
    from server.query_log import QueryLog
    from server.service import Metrics, attach, create_server

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
        return build_searcher(bundle, config, models["reranker"], models["ranker"])

    query_log = QueryLog(config.logs)
    pointer = args.bundle if Path(args.bundle).is_symlink() else None
    server, port, servicer, health = create_server(None, f"{args.host}:{args.port}", config.server, catalog=catalog,
                                                   metrics=metrics, query_log=query_log, loader=loader, pointer=pointer)
    searcher = build_searcher(str(Path(args.bundle).resolve()), config, args.reranker, args.ranker)
    live = None
    if not args.read_only:
        live = LiveIndex(searcher.bundle, searcher.text_encoder, config.live)
        live.start()
    attach(servicer, health, searcher, live)
    log.info("serving bundle %s (%d items) on %s:%d%s", searcher.bundle.version, len(searcher.bundle.docstore),
             args.host, port, "" if live else " read-only")
    print(f"listening on {args.host}:{port}", flush=True)
    stop = threading.Event()
    if args.watch:
        if pointer is None:
            raise ValueError(f"--watch needs --bundle to be a symlink (a `current` pointer), got {args.bundle}")
        if live is not None:
            raise ValueError("--watch swaps bundles, which needs --read-only (live writes go to the serving bundle's WAL)")
        servicer.reloader.watch(args.watch, stop)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining for up to %.0f s", signum, config.server.grace_s)
        health.enter_graceful_shutdown()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    server.stop(config.server.grace_s).wait()
    if live is not None:
        live.close()
    servicer.searcher.bundle.close()
    query_log.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    from server.cli import main

    sys.exit(main())
