"""Mixed load: search p50/p99 read-only vs. with ~20 writes/s, errors and server RSS growth.

    python bench/load_mixed.py --duration 150 --clients 4 --qps 60 --writes-per-s 20   # last line: JSON

Starts `vitrine serve` on a generated catalog (BM25-only by default; --text-vectors adds MiniLM, which
the server then also runs for every upsert), then runs two phases of `--duration` seconds each with
the same paced (open-loop) search traffic from `--clients` processes: read-only, then with one more
process streaming upserts, price/stock patches and deletes at `--writes-per-s`.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

WORDS = ["shirt", "dress", "watch", "shoes", "bag", "red", "blue", "black", "green", "men", "women", "casual",
         "sports", "formal", "jeans", "white", "summer", "leather", "cotton", "navy"]


def _searcher(target: str, rate: float, seconds: float, seed: int, out: mp.Queue) -> None:
    from vitrine.server.client import VitrineClient

    rng = random.Random(seed)
    lat, errors = [], 0
    with VitrineClient(target, timeout_s=10.0) as client:
        start = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + n / rate
            if due > now:
                time.sleep(due - now)
            n += 1
            text = " ".join(rng.sample(WORDS, rng.choice([1, 2, 3])))
            t0 = time.perf_counter()
            try:
                client.search(text, k=10, price_max=rng.choice([None, 50.0, 200.0]))
                lat.append((time.perf_counter() - t0) * 1e3)
            except Exception:  # noqa: BLE001 - counted, reported
                errors += 1
    out.put({"lat": lat, "errors": errors})


def _writer(target: str, rate: float, seconds: float, seed: int, ids: list[str], out: mp.Queue) -> None:
    import queue

    from vitrine.indexer.catalog import Item
    from vitrine.proto import search_pb2
    from vitrine.server.client import CatalogClient, item_to_proto

    rng = random.Random(seed)
    requests: queue.Queue = queue.Queue()
    writes, errors, lat = 0, 0, []
    deleted: set[str] = set()  # a patch of a deleted id is NOT_FOUND by design; patch only live ones
    with CatalogClient(target, timeout_s=10.0) as client:
        acks = client.upsert(iter(requests.get, None))
        start = time.perf_counter()
        while (now := time.perf_counter()) - start < seconds:
            due = start + writes / rate
            if due > now:
                time.sleep(due - now)
            item_id = rng.choice(ids)
            roll = rng.random()
            t0 = time.perf_counter()
            try:
                if roll < 0.15:
                    client.delete([item_id])
                    deleted.add(item_id)
                elif roll < 0.3 and item_id not in deleted:
                    requests.put(search_pb2.UpsertRequest(patch=search_pb2.ItemPatch(
                        id=item_id, price=round(rng.uniform(5, 300), 2), attributes={"stock": str(rng.randrange(50))})))
                    next(acks)
                else:
                    title = " ".join(rng.sample(WORDS, 4))
                    requests.put(search_pb2.UpsertRequest(item=item_to_proto(Item(
                        id=item_id, title=title.title(), category="Apparel > Live", attributes={"color": rng.choice(WORDS[5:9])},
                        price=round(rng.uniform(5, 300), 2)))))
                    next(acks)
                    deleted.discard(item_id)
                lat.append((time.perf_counter() - t0) * 1e3)
            except Exception:  # noqa: BLE001 - counted, reported
                errors += 1
                if roll >= 0.15:  # the stream is gone; open a new one
                    requests.put(None)
                    requests = queue.Queue()
                    acks = client.upsert(iter(requests.get, None))
            writes += 1
        requests.put(None)
    out.put({"writes": writes, "errors": errors, "lat": lat})


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _phase(target: str, pid: int, args: argparse.Namespace, writes: bool, ids: list[str], seed: int) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_searcher, args=(target, args.qps / args.clients, args.duration, seed + i, out))
             for i in range(args.clients)]
    if writes:
        procs.append(ctx.Process(target=_writer, args=(target, args.writes_per_s, args.duration, seed + 99, ids, out)))
    rss, stop = [], threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            rss.append(_rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    stop.set()
    lat = np.array([x for r in results if "writes" not in r for x in r["lat"]])
    summary = {"searches": int(len(lat)), "search_errors": sum(r["errors"] for r in results if "writes" not in r),
               "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
               "rss_mb_first": round(rss[0], 1) if rss else None, "rss_mb_last": round(rss[-1], 1) if rss else None,
               "rss_mb_max": round(max(rss), 1) if rss else None}
    for r in results:
        if "writes" in r:
            wl = np.array(r["lat"]) if r["lat"] else np.zeros(1)
            summary.update(writes=r["writes"], write_errors=r["errors"], writes_per_s=round(r["writes"] / args.duration, 1),
                           write_ack_p50_ms=round(float(np.percentile(wl, 50)), 2),
                           write_ack_p99_ms=round(float(np.percentile(wl, 99)), 2))
    return summary


def main(argv: list[str] | None = None) -> int:
    from vitrine.cli.demo import generate_catalog, start_server
    from vitrine.indexer.bundle import IndexerConfig, build_bundle
    from vitrine.indexer.catalog import read_catalog

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=150.0, help="seconds per phase")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--qps", type=float, default=60.0, help="total paced search rate over all clients")
    ap.add_argument("--writes-per-s", type=float, default=20.0)
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--text-vectors", action="store_true", help="index and upsert with MiniLM (CPU-heavy)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        catalog = generate_catalog(Path(tmp) / "catalog.jsonl", n=args.items)
        items, _ = read_catalog(catalog)
        encoder = None
        if args.text_vectors:
            from vitrine.encoders.text import SentenceTransformerEncoder

            encoder = SentenceTransformerEncoder("all-MiniLM-L6-v2")
        build_bundle(items, Path(tmp) / "bundle", encoder, IndexerConfig(progress=False))
        ids = [it.id for it in items[: len(items) // 2]]
        proc, target = start_server(Path(tmp) / "bundle")
        try:
            _phase(target, proc.pid, argparse.Namespace(**{**vars(args), "duration": 5.0}), False, ids, 7)  # warm-up
            read_only = _phase(target, proc.pid, args, False, ids, 1)
            mixed = _phase(target, proc.pid, args, True, ids, 1)
        finally:
            proc.send_signal(signal.SIGTERM)
            clean = proc.wait(timeout=120) == 0
    summary = {
        "duration_s_per_phase": args.duration, "clients": args.clients, "target_qps": args.qps, "items": args.items,
        "text_vectors": args.text_vectors, "read_only": read_only, "mixed": mixed,
        "p99_increase_pct": round(100 * (mixed["p99_ms"] / read_only["p99_ms"] - 1), 1),
        "p50_increase_pct": round(100 * (mixed["p50_ms"] / read_only["p50_ms"] - 1), 1),
        "rss_growth_mb_mixed": round((mixed["rss_mb_last"] or 0) - (mixed["rss_mb_first"] or 0), 1),
        "clean_exit": clean, "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
