"""BM25 query latency (p50/p99) through Bm25Index directly, over the largest catalogs here (scifact, fashion).

Usage: python bench/bm25.py [--bundles runs/scifact-Flat,runs/fashion-Flat] [--repeat 3] [--k 100]

Each bundle's Tantivy index is opened read-only and queried one query at a time with that data set's
real queries (scifact claims; fashion text-literal + text-paraphrase), after one untimed pass.
Last stdout line: one JSON object, also written to bench/results/bm25.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine, report  # noqa: E402
from vitrine.indexer.bm25 import Bm25Config, Bm25Index  # noqa: E402
from vitrine.ranking.metrics import load_queries  # noqa: E402

DATA = Path(os.environ.get("VITRINE_DATA", ROOT.parent / "shared" / "data"))
TASKS = {"scifact": ["claims"], "fashion": ["text-literal", "text-paraphrase"]}


def bench_bundle(bundle: Path, dataset: str, k: int, repeat: int) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    bm = manifest.get("bm25", {})
    index = Bm25Index(bundle / bm.get("dir", "bm25"), Bm25Config(tokenizer=bm.get("tokenizer", "en_stem"),
                                                                 boosts=bm.get("boosts", Bm25Config().boosts)))
    texts = [q["text"] for task in TASKS[dataset] for q in load_queries(DATA / dataset / "queries" / f"{task}.jsonl")
             if q.get("text")]
    for t in texts:  # warm the page cache and the searcher
        index.search(t, k)
    lat, hits = [], []
    for _ in range(repeat):
        for t in texts:
            t0 = time.perf_counter()
            res = index.search(t, k)
            lat.append((time.perf_counter() - t0) * 1e3)
            hits.append(len(res))
    index.close()
    a = np.asarray(lat)
    return {"bundle": str(bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle), "dataset": dataset,
            "docs": manifest["counts"]["items"], "index_bytes": sum(f.stat().st_size for f in (bundle / "bm25").rglob("*") if f.is_file()),
            "queries": len(texts), "timed_calls": len(lat), "k": k, "mean_hits": round(float(np.mean(hits)), 1),
            "p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3), "qps_one_thread": round(1e3 / float(a.mean()), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundles", default="runs/scifact-Flat,runs/fashion-Flat")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    results = []
    for b in args.bundles.split(","):
        bundle = (ROOT / b) if not Path(b).is_absolute() else Path(b)
        dataset = next((d for d in TASKS if d in bundle.name), None)
        if dataset is None:
            raise ValueError(f"bundle {bundle} must be named after a data set ({', '.join(TASKS)}).")
        results.append(bench_bundle(bundle, dataset, args.k, args.repeat))
        print(json.dumps(results[-1]), file=sys.stderr)
    largest = max(results, key=lambda r: r["index_bytes"])
    report("bm25", {"bench": "bm25", "machine": machine(), "largest": largest["dataset"], "p50_ms": largest["p50_ms"],
                    "p99_ms": largest["p99_ms"], "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
