"""Query-path speed, torch against ONNX int8 in one run: `vitrine serve` in one process, this load generator in another.

    python bench/speed.py [--runs runs/speed] [--backends torch,onnx-int8] [--seconds 10]   # last line: JSON

Without --bundle / --reranker / --scifact-bundle it builds what is missing under --runs with the shipped defaults
(about an hour on 2 cores; reused afterwards): `vitrine train clip` on fashion, `vitrine index` of fashion (text +
CLIP, with their ONNX variants) and of scifact, and `vitrine train reranker` on 400 queries generated from fashion's
attributes (bench/second_stage.py's recipe; the cross-encoder's ONNX variants are measured on its held-out queries).

For each backend (`[encoders] backend = ...` in a generated config; everything else default) the server is started
on the same bundle, then, open loop (requests sent on a fixed schedule, latency from the scheduled send time):
1. text queries, first stage only, at rising rates: p50/p99 and the highest rate whose p99 stays under 50 and 100 ms;
2. the cross-encoder stage at depth 20 (`--reranker`), text queries at `--cross-rate`: p50/p99 of the server's
   `cross` stage time and of the whole request;
3. image and composed queries at 20 QPS: p50/p99;
4. mixed text, image and composed queries at rising rates;
5. text queries at `--write-search-rate` QPS without and then with another process streaming 20 writes/s (upserts,
   patches, deletes): p99 with and without, and the rise;
6. nDCG@10 of every fashion task (and scifact with `--scifact-bundle`) through the server, the same queries per
   backend, first stage and (with `--reranker`) cross stage;
7. the server's memory (RSS now and peak) after the run.
Per-stage p50/p99 come from the servers' own `stage_ms`. The query-embedding cache is off (`cache_size = 0`), since
the load repeats each fashion query many times; everything else is the default. Results: bench/results/speed.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine, report  # noqa: E402
from vitrine.proto import search_pb2  # noqa: E402
from vitrine.ranking.metrics import evaluate, load_qrels, load_queries  # noqa: E402
from vitrine.server.client import VitrineClient  # noqa: E402

DATA = Path(os.environ.get("VITRINE_DATA", ROOT.parent / "shared" / "data"))
FASHION_TASKS = ("text-literal", "text-paraphrase", "image", "composed")
KINDS = {"text": ("text-literal", "text-paraphrase"), "image": ("image",), "composed": ("composed",)}


def requests_for(task: str, k: int = 10, stages: str = "first", folder: str = "fashion",
                 rerank_depth: int | None = None) -> list[tuple[str, search_pb2.SearchRequest]]:
    out = []
    for q in load_queries(DATA / folder / "queries" / f"{task}.jsonl"):
        image = (DATA / folder / q["image"]).read_bytes() if q.get("image") else b""
        req = search_pb2.SearchRequest(text=q.get("text", ""), image=image, k=k, exclude_ids=q.get("exclude_ids") or [],
                                       stages=stages)
        if rerank_depth is not None:
            req.rerank_depth = rerank_depth
        out.append((str(q.get("qid") or q.get("_id")), req))
    return out


def percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"p50_ms": None, "p99_ms": None}
    a = np.asarray(xs)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2)}


def run_rate(stub, pool: list[search_pb2.SearchRequest], rate: float, seconds: float, rng: random.Random) -> dict:
    """Sends rate*seconds requests on a fixed schedule; latency from the scheduled time; the servers' stage times."""
    n = max(1, int(rate * seconds))
    lat: list[float] = []
    stages: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    lock, done = threading.Lock(), threading.Semaphore(0)

    def on_done(fut, sent: float) -> None:
        elapsed = (time.perf_counter() - sent) * 1e3
        with lock:
            exc = fut.exception()
            if exc is None:
                lat.append(elapsed)
                for stage, ms in fut.result().stage_ms.items():
                    stages.setdefault(stage, []).append(ms)
            else:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
        done.release()

    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.002))
        fut = stub.Search.future(rng.choice(pool), timeout=10.0)
        fut.add_done_callback(lambda f, sent=due: on_done(f, sent))
    for _ in range(n):
        done.acquire()
    wall = time.perf_counter() - start
    return {"rate_qps": rate, "sent": n, "ok": len(lat), "errors": errors, "achieved_qps": round(len(lat) / wall, 1),
            **percentiles(lat), "stages": {s: percentiles(v) for s, v in sorted(stages.items())}}


def rising(stub, pool: list, rates: list[float], seconds: float, label: str) -> dict:
    rows, rng = [], random.Random(0)
    for rate in rates:
        row = run_rate(stub, pool, rate, seconds, rng)
        rows.append(row)
        print(f"  {label} {rate:>5.0f} QPS: p50 {row['p50_ms']} p99 {row['p99_ms']} ms, errors {row['errors']}",
              file=sys.stderr, flush=True)
        if row["p99_ms"] is None or row["p99_ms"] > 1000 or sum(row["errors"].values()) > 0.05 * row["sent"]:
            break  # saturated: higher rates only queue
        time.sleep(1.0)

    def best(budget: float) -> float | None:
        return max((r["rate_qps"] for r in rows if r["p99_ms"] is not None and r["p99_ms"] < budget and not r["errors"]),
                   default=None)

    return {"rates": rows, "max_qps_p99_under_50ms": best(50.0), "max_qps_p99_under_100ms": best(100.0)}


def writer(target: str, rate: float, seconds: float, ids: list[str], stop: threading.Event, out: dict) -> None:
    """One client streaming upserts (70%), price patches (15%) and deletes (15%) at `rate` per second."""
    from vitrine.indexer.catalog import Item
    from vitrine.server.client import CatalogClient, item_to_proto

    rng = random.Random(7)
    words = ["shirt", "dress", "watch", "shoes", "bag", "red", "blue", "black", "green", "casual", "cotton", "navy"]
    requests: queue.Queue = queue.Queue()
    writes, errors, lat, deleted = 0, 0, [], set()
    with CatalogClient(target, timeout_s=10.0) as client:
        acks = client.upsert(iter(requests.get, None))
        start = time.perf_counter()
        while not stop.is_set() and time.perf_counter() - start < seconds:
            due = start + writes / rate
            if due > time.perf_counter():
                time.sleep(due - time.perf_counter())
            item_id, roll = rng.choice(ids), rng.random()
            t0 = time.perf_counter()
            try:
                if roll < 0.15:
                    client.delete([item_id])
                    deleted.add(item_id)
                elif roll < 0.3 and item_id not in deleted:
                    requests.put(search_pb2.UpsertRequest(patch=search_pb2.ItemPatch(id=item_id, price=round(rng.uniform(5, 300), 2))))
                    next(acks)
                else:
                    title = " ".join(rng.sample(words, 4)).title()
                    requests.put(search_pb2.UpsertRequest(item=item_to_proto(Item(
                        id=item_id, title=title, category="Apparel > Live", attributes={"color": rng.choice(words[5:9])},
                        price=round(rng.uniform(5, 300), 2)))))
                    next(acks)
                    deleted.discard(item_id)
                lat.append((time.perf_counter() - t0) * 1e3)
            except Exception:  # noqa: BLE001 - counted, reported
                errors += 1
                if roll >= 0.15:
                    requests.put(None)
                    requests = queue.Queue()
                    acks = client.upsert(iter(requests.get, None))
            writes += 1
        requests.put(None)
    out.update(writes=writes, errors=errors, write_ms=percentiles(lat))


def writer_process(target: str, rate: float, seconds: float, ids: list[str], results: "mp.Queue") -> None:
    out: dict = {}
    writer(target, rate, seconds, ids, threading.Event(), out)
    results.put(out)


def quality(client: VitrineClient, tasks: dict[str, tuple[str, list]], stages: str) -> dict[str, float]:
    out = {}
    for name, (qrels_path, reqs) in tasks.items():
        run = {}
        for qid, req in reqs:
            r = search_pb2.SearchRequest()
            r.CopyFrom(req)
            r.stages = stages
            resp = client.stub.Search(r, timeout=60)
            run[qid] = [h.id for h in resp.hits]
        out[name] = round(evaluate(run, load_qrels(qrels_path), ks=(10,))["ndcg@10"], 4)
    return out


def memory_mb(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[{"VmRSS": "rss_mb", "VmHWM": "peak_rss_mb"}[key]] = round(int(value.split()[0]) / 1024, 1)
    return fields


def start(bundle: Path, backend: str, reranker: str | None, workdir: Path) -> tuple[subprocess.Popen, str]:
    from vitrine.cli.demo import start_server

    config = workdir / f"vitrine-{backend}.toml"
    # The query cache is off: the load repeats each fashion query many times, and every request must pay its encoding.
    config.write_text(f'[encoders]\nbackend = "{backend}"\ncache_size = 0\n')
    return start_server(bundle, ["--config", str(config), *(["--reranker", reranker] if reranker else [])])


def measure_backend(backend: str, args: argparse.Namespace, workdir: Path) -> dict:
    out: dict = {"backend": backend}
    rates = [float(r) for r in args.rates.split(",")]
    text = [r for t in KINDS["text"] for _, r in requests_for(t)]
    photos = [r for t in ("image", "composed") for _, r in requests_for(t)]
    # Scifact is served by its own server below; here, the fashion bundle (a copy: the write phase changes it).
    bundle = workdir / f"fashion-{backend}"
    subprocess.run(["cp", "-a", str(args.bundle), str(bundle)], check=True)
    proc, target = start(bundle, backend, args.reranker, workdir)
    try:
        with VitrineClient(target) as client:
            client.wait_ready()
            info = json.loads(client.stub.Info(search_pb2.InfoRequest(), timeout=30).manifest_json)
            out["served_backends"] = info.get("served_backends")
            for req in random.Random(1).sample(text, 30) + photos[:10]:  # warm-up, untimed
                client.stub.Search(req, timeout=60)
            out["memory_after_load"] = memory_mb(proc.pid)
            print(f"[{backend}] served backends {out['served_backends']}", file=sys.stderr, flush=True)
            out["text_first_stage"] = rising(client.stub, text, rates, args.seconds, f"[{backend}] text")
            if args.reranker:
                cross = [r for t in KINDS["text"] for _, r in requests_for(t, stages="cross", rerank_depth=20)]
                out["cross_depth20"] = run_rate(client.stub, cross, args.cross_rate, args.seconds * 2, random.Random(2))
                print(f"  [{backend}] cross @ {args.cross_rate} QPS: {out['cross_depth20']['stages'].get('cross')}, "
                      f"request p99 {out['cross_depth20']['p99_ms']}", file=sys.stderr, flush=True)
            out["image_composed_20qps"] = run_rate(client.stub, photos, 20.0, args.seconds * 2, random.Random(3))
            print(f"  [{backend}] image+composed @ 20 QPS: p50 {out['image_composed_20qps']['p50_ms']} "
                  f"p99 {out['image_composed_20qps']['p99_ms']}", file=sys.stderr, flush=True)
            mixed = text * 2 + photos  # about half text, half photo queries
            out["mixed"] = rising(client.stub, mixed, [r for r in rates if r <= 75], args.seconds, f"[{backend}] mixed")
            tasks = {t: (DATA / "fashion" / "qrels" / f"{t}.tsv", requests_for(t)) for t in FASHION_TASKS}
            out["ndcg@10_first"] = quality(client, tasks, "first")
            if args.reranker:
                text_tasks = {t: v for t, v in tasks.items() if t.startswith("text")}
                out["ndcg@10_cross"] = quality(client, text_tasks, "cross")
            print(f"  [{backend}] nDCG@10 {out['ndcg@10_first']} {out.get('ndcg@10_cross', '')}", file=sys.stderr, flush=True)
            # Writes: the same text load without, then with 20 writes/s from another client.
            ids = [json.loads(line)["id"] for line in open(DATA / "fashion" / "catalog.jsonl", encoding="utf-8")][:5000]
            rate = args.write_search_rate
            before = run_rate(client.stub, text, rate, args.write_seconds, random.Random(4))
            # The writer is its own process (a catalog job is another client), so it never competes with this
            # load generator for its interpreter lock.
            ctx = mp.get_context("spawn")
            results = ctx.Queue()
            w = ctx.Process(target=writer_process, args=(target, args.writes_per_s, args.write_seconds + 4, ids, results))
            w.start()
            time.sleep(3.0)  # the writer's interpreter starts and its stream opens
            during = run_rate(client.stub, text, rate, args.write_seconds, random.Random(4))
            wout = results.get(timeout=120)
            w.join(timeout=60)
            out["writes"] = {"search_qps": rate, "writes_per_s": args.writes_per_s, "without": before, "with": during,
                             "p99_rise": round(during["p99_ms"] / before["p99_ms"] - 1, 3) if before["p99_ms"] else None,
                             **wout}
            print(f"  [{backend}] {rate} QPS text p99 {before['p99_ms']} -> {during['p99_ms']} ms with "
                  f"{args.writes_per_s} writes/s ({wout})", file=sys.stderr, flush=True)
            out["memory_end"] = memory_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        subprocess.run(["rm", "-rf", str(bundle)], check=False)
    if args.scifact_bundle:
        proc, target = start(Path(args.scifact_bundle), backend, None, workdir)
        try:
            with VitrineClient(target) as client:
                client.wait_ready()
                reqs = scifact_requests()
                out["ndcg@10_first"]["scifact"] = quality(client, {"scifact": (DATA / "scifact" / "qrels" / "test.tsv", reqs)},
                                                          "first")["scifact"]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    return out


def scifact_requests() -> list[tuple[str, search_pb2.SearchRequest]]:
    """The claims judged in scifact's test qrels, as text queries."""
    judged = set(load_qrels(DATA / "scifact" / "qrels" / "test.tsv"))
    return [(str(q.get("qid") or q.get("_id")), search_pb2.SearchRequest(text=q["text"], k=10, stages="first"))
            for q in load_queries(DATA / "scifact" / "queries" / "claims.jsonl") if str(q.get("qid") or q.get("_id")) in judged]


def prepare(runs: Path) -> dict[str, Path]:
    """The models and bundles the benchmark serves, built with the shipped defaults where missing."""
    from bench.second_stage import write_generated

    runs.mkdir(parents=True, exist_ok=True)
    out = {"clip": runs / "clip-default", "fashion": runs / "fashion-clip", "scifact": runs / "scifact",
           "reranker": runs / "ce-fashion"}
    cli = [sys.executable, "-m", "vitrine.cli.main"]

    def step(done: Path, args: list[str]) -> None:
        if not done.exists():
            print("building:", " ".join(args), file=sys.stderr, flush=True)
            subprocess.run(cli + args, check=True, cwd=ROOT)

    fashion = DATA / "fashion" / "catalog.jsonl"
    step(out["clip"] / "training.json", ["train", "clip", "--catalog", str(fashion), "--out", str(out["clip"]), "--no-mlflow", "--quiet"])
    step(out["fashion"] / "manifest.json", ["index", "--catalog", str(fashion), "--out", str(out["fashion"]), "--clip-model",
                                            str(out["clip"]), "--force", "--quiet"])
    step(out["scifact"] / "manifest.json", ["index", "--catalog", str(DATA / "scifact" / "catalog.jsonl"), "--out",
                                            str(out["scifact"]), "--force", "--quiet"])
    if not (out["reranker"] / "training.json").exists():
        queries, qrels = write_generated(DATA / "fashion", runs / "fashion-generated", 400)
        step(out["reranker"] / "training.json", ["train", "reranker", "--catalog", str(fashion), "--queries", str(queries),
                                                 "--qrels", str(qrels), "--bundle", str(out["fashion"]), "--out",
                                                 str(out["reranker"]), "--epochs", "2", "--holdout", "0.1",
                                                 "--reserve-for-ranker", "0.35", "--quiet"])
    return out


def variants_of(bundle: Path, reranker: str | None) -> dict:
    """What the server can choose from: each model's variants record (loss, ms, bytes)."""
    from vitrine.encoders import onnx

    out = {name: onnx.read_record(bundle / "models" / name) for name in ("text", "clip")}
    if reranker:
        out["reranker"] = onnx.read_record(Path(reranker) / "onnx")
    from vitrine.encoders.config import EncoderConfig

    default = EncoderConfig()
    return {k: {"torch": v.get("torch"), "auto_picks": onnx.choose_backend(v, default.backend, default.max_backend_loss),
                **{n: {a: b for a, b in x.items() if a not in ("files", "file")} for n, x in v.get("variants", {}).items()}}
            for k, v in out.items() if v}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=str(ROOT / "runs" / "speed"), help="where missing models and bundles are built")
    p.add_argument("--bundle", help="fashion bundle with text and CLIP vectors (default: built under --runs)")
    p.add_argument("--reranker", help="cross-encoder directory (with onnx/ variants from `vitrine train reranker`)")
    p.add_argument("--scifact-bundle", help="also measure scifact nDCG@10 per backend on this bundle")
    p.add_argument("--backends", default="torch,onnx-int8")
    p.add_argument("--rates", default="10,25,50,75,100,150")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--cross-rate", type=float, default=5.0)
    p.add_argument("--write-search-rate", type=float, default=50.0)
    p.add_argument("--writes-per-s", type=float, default=20.0)
    p.add_argument("--write-seconds", type=float, default=45.0)
    args = p.parse_args(argv)
    if not (args.bundle and args.reranker and args.scifact_bundle):
        built = prepare(Path(args.runs))
        args.bundle = args.bundle or str(built["fashion"])
        args.reranker = args.reranker or str(built["reranker"])
        args.scifact_bundle = args.scifact_bundle or str(built["scifact"])
    args.reranker = None if args.reranker == "none" else args.reranker  # "none": skip that part
    args.scifact_bundle = None if args.scifact_bundle == "none" else args.scifact_bundle
    manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
    results: dict = {"bench": "speed", "machine": machine(), "bundle": str(args.bundle),
                     "bundle_version": manifest["bundle_version"], "reranker": args.reranker,
                     "variants": variants_of(Path(args.bundle), args.reranker), "seconds_per_rate": args.seconds,
                     "backends": {}}
    with tempfile.TemporaryDirectory(prefix="vitrine-speed-") as tmp:
        for backend in args.backends.split(","):
            results["backends"][backend] = measure_backend(backend, args, Path(tmp))
    b = results["backends"]
    if "torch" in b:
        base = b["torch"]["ndcg@10_first"]
        for name, r in b.items():
            r["ndcg@10_first_delta"] = {t: round(v - base[t], 4) for t, v in r["ndcg@10_first"].items() if t in base}
            if "ndcg@10_cross" in r:
                r["ndcg@10_cross_delta"] = {t: round(v - b["torch"]["ndcg@10_cross"][t], 4) for t, v in r["ndcg@10_cross"].items()}
    report("speed", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
