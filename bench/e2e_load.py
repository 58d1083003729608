"""End-to-end load: `vitrine serve` on the fashion bundle in one process, this open-loop load generator in another.

Usage: python bench/e2e_load.py [--bundle runs/fashion-Flat] [--rates 2,5,10,20,40] [--seconds 8]
                                [--mix text=1] [--target HOST:PORT]

At each rate, requests are sent on a fixed schedule (open loop: a slow server does not slow the sender)
as asynchronous gRPC calls; latency is from the scheduled send time to the reply, so queueing counts.
The query mix draws from fashion's text-literal + text-paraphrase (text), image, and composed query files;
image and composed queries need a CLIP bundle, so the default mix is text only.
Last stdout line: one JSON object, also written to bench/results/e2e_load.json.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine, report  # noqa: E402
from vitrine.proto import search_pb2  # noqa: E402
from vitrine.ranking.metrics import load_queries  # noqa: E402
from vitrine.server.client import VitrineClient  # noqa: E402

DATA = Path(os.environ.get("VITRINE_DATA", ROOT.parent / "shared" / "data"))
P99_BUDGET_MS = 100.0
QUERY_FILES = {"text": ["text-literal", "text-paraphrase"], "image": ["image"], "composed": ["composed"]}


def load_requests(kind: str, k: int) -> list[search_pb2.SearchRequest]:
    """SearchRequests for one query kind; images are read once, here, so sending costs no disk I/O."""
    out = []
    for task in QUERY_FILES[kind]:
        for q in load_queries(DATA / "fashion" / "queries" / f"{task}.jsonl"):
            image = (DATA / "fashion" / q["image"]).read_bytes() if q.get("image") else b""
            out.append(search_pb2.SearchRequest(text=q.get("text", ""), image=image, k=k,
                                                exclude_ids=q.get("exclude_ids") or []))
    return out


def parse_mix(spec: str) -> dict[str, float]:
    mix = {}
    for part in spec.split(","):
        kind, _, w = part.partition("=")
        if kind not in QUERY_FILES:
            raise ValueError(f"--mix: unknown query kind {kind!r}; kinds are {', '.join(QUERY_FILES)}.")
        mix[kind] = float(w or 1)
    return mix


def run_rate(stub, pool: dict[str, list], mix: dict[str, float], rate: float, seconds: float, rng: random.Random) -> dict:
    """Sends rate*seconds requests on a fixed schedule; returns latency percentiles and errors."""
    n = max(1, int(rate * seconds))
    kinds, weights = list(mix), list(mix.values())
    lat: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def on_done(fut, sent: float) -> None:
        elapsed = (time.perf_counter() - sent) * 1e3
        with lock:
            if fut.exception() is None:
                lat.append(elapsed)
            else:
                code = fut.exception().code().name
                errors[code] = errors.get(code, 0) + 1
        done.release()

    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.005))
        req = rng.choice(pool[rng.choices(kinds, weights)[0]])
        fut = stub.Search.future(req, timeout=10.0)
        fut.add_done_callback(lambda f, sent=due: on_done(f, sent))
    for _ in range(n):
        done.acquire()
    wall = time.perf_counter() - start
    a = np.asarray(lat) if lat else np.asarray([np.nan])
    return {"rate_qps": rate, "sent": n, "ok": len(lat), "errors": errors, "achieved_qps": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(a, 50)), 1), "p99_ms": round(float(np.percentile(a, 99)), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(ROOT / "runs" / "fashion-Flat"))
    p.add_argument("--target", help="use a running server instead of starting one")
    p.add_argument("--rates", default="2,5,10,20,40,80")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--mix", default="text=1", help="query kinds and weights, e.g. text=0.6,image=0.3,composed=0.1")
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)
    mix = parse_mix(args.mix)
    pool = {kind: load_requests(kind, args.k) for kind in mix}
    proc = None
    if args.target:
        target = args.target
    else:
        from vitrine.cli.demo import start_server

        proc, target = start_server(Path(args.bundle))
    rows = []
    try:
        with VitrineClient(target) as client:
            client.wait_ready()
            rng = random.Random(0)
            for req in rng.sample(pool[next(iter(mix))], 20):  # warm-up, untimed
                client.stub.Search(req, timeout=30)
            for rate in [float(r) for r in args.rates.split(",")]:
                row = run_rate(client.stub, pool, mix, rate, args.seconds, rng)
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
                if row["p99_ms"] > 20 * P99_BUDGET_MS or sum(row["errors"].values()) > 0.2 * row["sent"]:
                    break  # saturated: higher rates only queue
                time.sleep(1.0)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    within = [r for r in rows if r["p99_ms"] < P99_BUDGET_MS and not r["errors"]]
    report("e2e_load", {"bench": "e2e_load", "machine": machine(), "bundle": Path(args.bundle).name if not args.target else target,
                        "mix": mix, "k": args.k, "seconds_per_rate": args.seconds, "p99_budget_ms": P99_BUDGET_MS,
                        "max_rate_p99_under_budget": max((r["rate_qps"] for r in within), default=None), "rates": rows,
                        "notes": "server and load generator share the same 2 CPU cores with other jobs"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
