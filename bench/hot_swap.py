"""Hot swap under load: `vitrine serve --read-only` answers a steady query stream while it is told to switch
bundles again and again (Admin/Reload), and once by re-pointing a watched `current` symlink.

Counts failed queries (the target is zero) and compares latency in a window around each switch with the rest.

    python bench/hot_swap.py [--bundles runs/fashion-auto runs/fashion-Flat] [--swaps 6] [--threads 4]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from bench.machine import machine, report  # noqa: E402
from vitrine.cli.demo import start_server  # noqa: E402
from vitrine.serving.tenancy import point_current  # noqa: E402
from vitrine.server.client import VitrineClient  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bundles", nargs=2, default=[str(ROOT / "runs" / "fashion-auto"), str(ROOT / "runs" / "fashion-Flat")])
    p.add_argument("--queries", default=str(ROOT.parent / "shared" / "data" / "fashion" / "queries" / "text-literal.jsonl"))
    p.add_argument("--swaps", type=int, default=6)
    p.add_argument("--gap-s", type=float, default=8.0, help="seconds between switches")
    p.add_argument("--threads", type=int, default=4)
    args = p.parse_args(argv)
    texts = [json.loads(line)["text"] for line in open(args.queries, encoding="utf-8")]
    a, b = (Path(x).resolve() for x in args.bundles)
    link = ROOT / "runs" / "hot-swap-current"
    point_current(link, a)
    proc, target = start_server(link, ["--read-only", "--watch", "1"])
    samples: list[tuple[float, float, str]] = []   # (start time, latency ms, bundle version)
    errors: list[str] = []
    stop = threading.Event()

    def hammer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with VitrineClient(target, timeout_s=10) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = client.search(texts[int(rng.integers(len(texts)))], k=10)
                    samples.append((t0, (time.perf_counter() - t0) * 1e3, r.bundle_version))
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}")

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(args.threads)]
    switches: list[tuple[float, float]] = []   # (start, end) of each switch
    try:
        for t in threads:
            t.start()
        time.sleep(args.gap_s)
        with VitrineClient(target) as client:
            for i in range(args.swaps):
                t0 = time.perf_counter()
                client.reload(str(b if i % 2 == 0 else a))
                switches.append((t0, time.perf_counter()))
                time.sleep(args.gap_s)
        before = {v for _, _, v in samples[-50:]}
        t0 = time.perf_counter()
        point_current(link, b if args.swaps % 2 == 0 else a)     # the watcher follows the symlink
        while {v for _, _, v in samples[-20:]} == before and time.perf_counter() - t0 < 120:
            time.sleep(0.2)
        switches.append((t0, time.perf_counter()))
        time.sleep(args.gap_s)
    finally:
        stop.set()
        for t in threads:
            t.join()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        if link.is_symlink():
            os.unlink(link)
    lat = np.array([ms for _, ms, _ in samples])
    near = np.array([any(s - 1.0 <= t <= e + 1.0 for s, e in switches) for t, _, _ in samples])
    result = {
        "queries": len(samples), "failed": len(errors), "first_errors": errors[:5], "switches": len(switches),
        "switch_seconds": [round(e - s, 2) for s, e in switches], "versions_seen": sorted({v for _, _, v in samples}),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1)},
        "latency_ms_near_switches": {"p50": round(float(np.percentile(lat[near], 50)), 1),
                                     "p99": round(float(np.percentile(lat[near], 99)), 1), "queries": int(near.sum())},
        "latency_ms_elsewhere": {"p50": round(float(np.percentile(lat[~near], 50)), 1),
                                 "p99": round(float(np.percentile(lat[~near], 99)), 1)},
        "threads": args.threads, "bundles": [str(a), str(b)], "machine": machine(),
    }
    report("hot_swap", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
