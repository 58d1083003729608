"""One writer per bundle: while server A takes acknowledged writes, a second writable `vitrine serve` on the same
bundle is started N times (and `vitrine index --force` into it once); each must refuse to start naming the bundle
and A's pid. Then A is restarted and every write it acknowledged must be there.

    .venv/bin/python bench/two_writers.py [--tries 10] [--out bench/results/two_writers.json]

Figures (issue 23): refusals (goal N of N), acknowledged writes lost (goal 0). Needs no shared data.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from vitrine.cli.demo import _vitrine, start_server
from vitrine.indexer.bundle import IndexerConfig, build_bundle
from vitrine.indexer.catalog import Item
from vitrine.server.client import CatalogClient

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tries", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "two_writers.json"))
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vitrine-two-writers-"))
    bundle = work / "bundle"
    items = [Item(id=f"seed-{i}", title=f"product {i}", price=float(i)) for i in range(50)]
    build_bundle(items, bundle, None, IndexerConfig(onnx=False, progress=False))  # BM25 only: starts in a second
    (work / "c.jsonl").write_text(json.dumps({"id": "z", "title": "z"}) + "\n")
    proc, target = start_server(bundle)
    acked: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with CatalogClient(target, timeout_s=30.0) as client:
            n = 0
            while not stop.is_set():
                acked.extend(a.id for a in client.upsert_items([Item(id=f"via-A-{n}", title=f"written through A {n}")]))
                n += 1

    t = threading.Thread(target=writer)
    t.start()
    tries = []
    try:
        for _ in range(args.tries):
            r = subprocess.run(_vitrine("serve", "--bundle", str(bundle), "--port", "0"), capture_output=True, text=True,
                               timeout=300)
            lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("{")]  # JSON lines are logs
            tries.append({"exit": r.returncode, "listened": "listening" in r.stdout, "message": lines[-1] if lines else "",
                          "refused": r.returncode == 2 and "listening" not in r.stdout and len(lines) == 1
                          and str(bundle) in lines[0] and f"pid {proc.pid}" in lines[0] and "Traceback" not in r.stderr})
        r = subprocess.run(_vitrine("index", "--catalog", str(work / "c.jsonl"), "--out", str(bundle), "--force",
                                    "--no-text-vectors", "--quiet"), capture_output=True, text=True, timeout=300)
        index_refused = r.returncode == 2 and f"pid {proc.pid}" in r.stderr and "Traceback" not in r.stderr
    finally:
        stop.set()
        t.join(60)
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    proc, target = start_server(bundle)
    try:
        with CatalogClient(target) as client:
            present = {s["id"] for start in range(0, len(acked), 500)
                       for s in client.get(acked[start:start + 500])}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {"tries": len(tries), "refused": sum(t["refused"] for t in tries), "index_force_refused": index_refused,
              "acked_writes": len(acked), "acked_lost": len(set(acked) - present), "example_message": tries[0]["message"],
              "commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": f"{os.cpu_count()} CPUs"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["refused"] == result["tries"] and index_refused and result["acked_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
