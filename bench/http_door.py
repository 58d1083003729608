"""JSON over HTTP against gRPC (issue 27): the same hits and scores for every fashion text-literal and composed query,
and the latency of both doors at 50 QPS, one run, requests interleaved.

    .venv/bin/python bench/http_door.py --bundle BUNDLE [--data ../shared/data] [--qps 50] [--requests 400]

BUNDLE is a fashion bundle with text and CLIP vectors, e.g. the one bench/images.py builds (BUNDLES/fashion-clip).
One `vitrine serve --read-only --http-port 0` process serves both doors. Hits are compared id by id and score by score
(exact float equality: both doors serialise the same SearchResponse). Latency is client-side, open loop: every 1/qps s
the next request starts on its own thread, gRPC and HTTP alternating, so both see the same machine. Last stdout line:
the results JSON (also bench/results/http_door.json). (Not bench/http.py: a script there would shadow the standard
library's http package.)
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from machine import machine, report  # noqa: E402

from vitrine.ranking.metrics import load_queries  # noqa: E402
from vitrine.server.client import VitrineClient  # noqa: E402
from vitrine.serving.process import start_serve  # noqa: E402


def http_search(base: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}/v1/search", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def queries_of(data: Path) -> list[tuple[str, str, bytes]]:
    """(task, text, photo bytes) of every text-literal and composed query."""
    folder = data / "fashion"
    out = [("text-literal", q["text"], b"") for q in load_queries(folder / "queries" / "text-literal.jsonl")]
    for q in load_queries(folder / "queries" / "composed.jsonl"):
        out.append(("composed", q.get("text", ""), (folder / q["image"]).read_bytes()))
    return out


def same_answers(target: str, base: str, queries: list[tuple[str, str, bytes]]) -> dict:
    mismatched: dict[str, int] = {}
    examples = []
    with VitrineClient(target, timeout_s=60) as client:
        for task, text, photo in queries:
            g = client.search(text, photo, k=10)
            h = http_search(base, {"text": text, "k": 10, **({"image": base64.b64encode(photo).decode()} if photo else {})})
            if [(x.id, x.score) for x in g.hits] != [(x["id"], x["score"]) for x in h.get("hits", [])]:
                mismatched[task] = mismatched.get(task, 0) + 1
                if len(examples) < 3:
                    examples.append({"task": task, "text": text, "grpc": [x.id for x in g.hits],
                                     "http": [x["id"] for x in h.get("hits", [])]})
    counts = {t: sum(1 for q in queries if q[0] == t) for t in ("text-literal", "composed")}
    return {"queries": counts, "mismatched": mismatched, "examples": examples, "met": not mismatched}


def latency(target: str, base: str, texts: list[str], qps: float, requests: int) -> dict:
    """Open loop at `qps`, gRPC and HTTP alternating; p50/p99 per door."""
    times: dict[str, list[float]] = {"grpc": [], "http": []}
    errors: list[str] = []
    client = VitrineClient(target, timeout_s=30)

    def one(door: str, text: str) -> None:
        t0 = time.perf_counter()
        try:
            if door == "grpc":
                client.search(text, k=10)
            else:
                http_search(base, {"text": text, "k": 10})
            times[door].append((time.perf_counter() - t0) * 1e3)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{door}: {type(exc).__name__}: {exc}")

    threads = []
    start = time.perf_counter()
    for n in range(requests * 2):
        wait = start + n / qps - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        t = threading.Thread(target=one, args=("grpc" if n % 2 == 0 else "http", texts[(n // 2) % len(texts)]))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    client.close()
    out = {door: {"requests": len(v), "p50_ms": round(float(np.percentile(v, 50)), 2),
                  "p99_ms": round(float(np.percentile(v, 99)), 2)} for door, v in times.items()}
    out["p99_rise_ms"] = round(out["http"]["p99_ms"] - out["grpc"]["p99_ms"], 2)
    out["errors"] = errors[:5]
    out["met"] = out["p99_rise_ms"] <= 5.0 and not errors
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="a fashion bundle with text and CLIP vectors")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--qps", type=float, default=50.0)
    p.add_argument("--requests", type=int, default=400, help="per door")
    args = p.parse_args(argv)
    queries = queries_of(Path(args.data))
    proc, target = start_serve(["--bundle", args.bundle, "--read-only", "--http-port", "0"], 300)
    try:
        line = proc.stdout.readline()
        base = line.split("http on ", 1)[1].strip()
        print(f"serving gRPC {target}, HTTP {base}", file=sys.stderr, flush=True)
        texts = [t for task, t, _ in queries if task == "text-literal"]
        for text in texts:   # warm both doors and the query cache alike
            http_search(base, {"text": text, "k": 10})
        result = {"bench": "http_door", "bundle": args.bundle, "same_answers": same_answers(target, base, queries),
                  "latency_50qps": latency(target, base, texts, args.qps, args.requests), **machine()}
    finally:
        proc.terminate()
        proc.wait(30)
    report("http_door", result)
    return 0 if result["same_answers"]["met"] and result["latency_50qps"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
