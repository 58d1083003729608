"""Tenants on one server: memory per tenant and per shared model, and each tenant's p99 under mixed load and under a
10x flood on another tenant.

    python bench/tenants.py [--runs runs/speed] [--seconds 30]     # last line: JSON; bench/results/tenants.json

Builds what is missing under --runs with the shipped defaults (bench/speed.py's CLIP, fashion and scifact bundles;
a flickr8k bundle with that CLIP; two LoRA adapters on MiniLM, each indexing the first 1,000 fashion items), then:

1. Memory: one `vitrine serve --tenants` process, tenants created one by one over the Admin API (fashion, scifact,
   flickr8k, a second tenant on fashion's bundle, two LoRA tenants); RSS after each, and the pool's weights. Then
   the same three shops with `[encoders] share_models = false`: the memory sharing saves.
2. Load: fashion (text), scifact (claims) and flickr8k (captions -> photos) at their normal rates, in separate
   processes, each tenant with its own API key and a quota of twice its rate; then scifact floods at 10x its rate.
   Per-tenant p50/p99 (open loop, latency from the scheduled send time), and the others' p99 rise.
The query cache is off (the load repeats queries). Do not run anything else meanwhile: two cores are shared.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine, report  # noqa: E402
from bench.speed import memory_mb, percentiles, prepare  # noqa: E402
from vitrine.proto import search_pb2, search_pb2_grpc  # noqa: E402
from vitrine.ranking.metrics import load_queries  # noqa: E402

DATA = Path(os.environ.get("VITRINE_DATA", ROOT.parent / "shared" / "data"))
SHOPS = {"fashion": ("fashion", "text-literal"), "scifact": ("scifact", "claims"), "flickr8k": ("flickr8k", "caption")}
RATES = {"fashion": 20.0, "scifact": 10.0, "flickr8k": 10.0}
# flickr8k's photos have no titles, so the indexer cannot check CLIP's 8-bit text tower on that catalog and "auto"
# keeps torch there; the tenant names the variant checked on fashion (loss 0.0032) and so shares fashion's copy.
OVERRIDES = {"flickr8k": '[encoders]\nbackend = "onnx-int8"\n'}
FLOODED = "scifact"


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vitrine.cli.main", *args], check=True, cwd=ROOT)


def make_adapter(out: Path, seed: int) -> Path:
    """A LoRA adapter on MiniLM saved as `vitrine train text --adapter lora` saves one (rank 8). Its weights are
    seeded noise, not trained: an adapter's memory does not depend on what it learned."""
    import torch

    from vitrine.encoders.text import load_text_model, resolve_text_model
    from vitrine.trainer.text import add_lora, save_model

    if (out / "vitrine_adapter.json").is_file():
        return out
    model = load_text_model(resolve_text_model("all-MiniLM-L6-v2"), "cpu")
    add_lora(model, rank=8)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model[0].model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out, "all-MiniLM-L6-v2", "lora")
    return out


def prepare_all(runs: Path) -> dict[str, Path]:
    out = prepare(runs)
    flickr = runs / "flickr8k-clip"
    if not (flickr / "manifest.json").is_file():
        print("building: flickr8k bundle", file=sys.stderr, flush=True)
        _cli("index", "--catalog", str(DATA / "flickr8k" / "catalog.jsonl"), "--out", str(flickr), "--clip-model",
             str(out["clip"]), "--no-text-vectors", "--force", "--quiet")
    out["flickr8k"] = flickr
    subset = runs / "fashion-1k.jsonl"
    if not subset.is_file():
        lines = (DATA / "fashion" / "catalog.jsonl").read_text(encoding="utf-8").splitlines()[:1000]
        rows = [json.loads(line) for line in lines]
        for r in rows:
            r.pop("image", None)   # the LoRA tenants are text-only: their memory is the adapter's
        subset.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for n in (1, 2):
        adapter = make_adapter(runs / f"lora{n}", seed=n)
        bundle = runs / f"fashion-1k-lora{n}"
        if not (bundle / "manifest.json").is_file():
            print(f"building: LoRA bundle {n}", file=sys.stderr, flush=True)
            _cli("index", "--catalog", str(subset), "--out", str(bundle), "--text-model", str(adapter), "--force", "--quiet")
        out[f"lora{n}"] = bundle
    return out


def start_tenants_server(tenants_dir: Path, keys: Path, config: Path) -> tuple[subprocess.Popen, str]:
    from vitrine.cli.demo import start_serve

    return start_serve(["--tenants", str(tenants_dir), "--keys", str(keys), "--config", str(config), "--read-only"],
                       timeout_s=900)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def write_keys(path: Path, names: list[str]) -> dict[str, str]:
    from vitrine.server.auth import create_key

    path.unlink(missing_ok=True)
    keys = {name: create_key(path, name, ["search"])[1] for name in names}
    keys["*"] = create_key(path, "*", ["admin"])[1]
    return keys


def settle_rss(pid: int) -> dict:
    """RSS once the server has been idle for a moment (freed pages returned, loads finished)."""
    time.sleep(2.0)
    return memory_mb(pid)


def measure_memory(bundles: dict[str, Path], work: Path) -> dict:
    from vitrine.server.client import VitrineClient

    out: dict = {"steps": []}
    config = work / "shared.toml"
    config.write_text("[encoders]\ncache_size = 0\n")
    names = ["fashion", "scifact", "flickr8k", "fashion-2", "lora1", "lora2"]
    sources = {"fashion": bundles["fashion"], "scifact": bundles["scifact"], "flickr8k": bundles["flickr8k"],
               "fashion-2": bundles["fashion"], "lora1": bundles["lora1"], "lora2": bundles["lora2"]}
    tenants_dir = work / "memory-tenants"
    shutil.rmtree(tenants_dir, ignore_errors=True)
    tenants_dir.mkdir(parents=True)
    keys = write_keys(work / "keys.json", names)
    proc, target = start_tenants_server(tenants_dir, work / "keys.json", config)
    try:
        before = memory_mb(proc.pid)
        out["empty_server_rss_mb"] = before["rss_mb"]
        print(f"  empty server: {before['rss_mb']} MB", file=sys.stderr, flush=True)
        with VitrineClient(target, token=keys["*"], timeout_s=900) as admin:
            for name in names:
                admin.create_tenant(name, str(sources[name]), read_only=True, config_toml=OVERRIDES.get(name, ""))
                with VitrineClient(target, token=keys[name], tenant=name) as c:
                    for text in ("red shirt", "cells", "a dog runs"):
                        c.search(text)
                rss = settle_rss(proc.pid)
                pool = json.loads(admin.list_tenants().shared_models_json)
                step = {"tenant": name, "bundle": sources[name].name, "rss_mb": rss["rss_mb"],
                        "delta_mb": round(rss["rss_mb"] - before["rss_mb"], 1), "pool": pool}
                out["steps"].append(step)
                print(f"  + {name:<9} ({sources[name].name}): RSS {rss['rss_mb']} MB (+{step['delta_mb']})",
                      file=sys.stderr, flush=True)
                before = rss
    finally:
        stop(proc)
    # The same three shops without sharing: each tenant loads its own copies.
    for share in (True, False):
        config = work / f"share-{share}.toml"
        config.write_text(f"[encoders]\ncache_size = 0\nshare_models = {str(share).lower()}\n")
        three = work / f"three-{share}"
        shutil.rmtree(three, ignore_errors=True)
        for name in SHOPS:
            (three / name).mkdir(parents=True)
            (three / name / "tenant.toml").write_text(f'bundle = "{sources[name]}"\nread_only = true\n' + OVERRIDES.get(name, ""))
        proc, target = start_tenants_server(three, work / "keys.json", config)
        try:
            out[f"three_shops_rss_mb_share_{str(share).lower()}"] = settle_rss(proc.pid)["rss_mb"]
        finally:
            stop(proc)
    out["saved_by_sharing_mb"] = round(out["three_shops_rss_mb_share_false"] - out["three_shops_rss_mb_share_true"], 1)
    return out


def requests_for(shop: str) -> list[search_pb2.SearchRequest]:
    folder, task = SHOPS[shop]
    return [search_pb2.SearchRequest(text=q["text"], k=10, stages="first")
            for q in load_queries(DATA / folder / "queries" / f"{task}.jsonl") if q.get("text")]


def tenant_load(target: str, tenant: str, key: str, rate: float, seconds: float, seed: int, out: mp.Queue) -> None:
    """One tenant's open-loop load in its own process: latencies of answered requests, and refusals by code."""
    import grpc

    channel = grpc.insecure_channel(target)
    stub = search_pb2_grpc.SearchStub(channel)
    pool, rng = requests_for(tenant), random.Random(seed)
    metadata = (("authorization", f"Bearer {key}"), ("x-vitrine-tenant", tenant))
    n = max(1, int(rate * seconds))
    lat, errors, lock, done = [], {}, threading.Lock(), threading.Semaphore(0)

    def on_done(fut, sent: float) -> None:
        with lock:
            exc = fut.exception()
            if exc is None:
                lat.append((time.perf_counter() - sent) * 1e3)
            else:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
        done.release()

    start = time.perf_counter() + 0.5
    for i in range(n):
        due = start + i / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.002))
        fut = stub.Search.future(rng.choice(pool), metadata=metadata, timeout=10.0)
        fut.add_done_callback(lambda f, sent=due: on_done(f, sent))
    for _ in range(n):
        done.acquire()
    out.put({"tenant": tenant, "rate_qps": rate, "sent": n, "ok": len(lat), "errors": errors, **percentiles(lat)})


def run_phase(target: str, keys: dict[str, str], rates: dict[str, float], seconds: float, seed: int) -> dict[str, dict]:
    results: mp.Queue = mp.Queue()
    procs = [mp.Process(target=tenant_load, args=(target, name, keys[name], rate, seconds, seed + n, results))
             for n, (name, rate) in enumerate(rates.items())]
    for p in procs:
        p.start()
    rows = [results.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    return {r["tenant"]: r for r in rows}


def measure_load(bundles: dict[str, Path], work: Path, seconds: float) -> dict:
    tenants_dir = work / "load-tenants"
    shutil.rmtree(tenants_dir, ignore_errors=True)
    for name in SHOPS:
        (tenants_dir / name).mkdir(parents=True)
        # Each shop's quota is twice its normal rate: a flood is refused at the door, not queued.
        (tenants_dir / name / "tenant.toml").write_text(
            f'bundle = "{bundles[name]}"\nread_only = true\n[quota]\nqps = {2 * RATES[name]:g}\nburst = {2 * RATES[name]:g}\n'
            + OVERRIDES.get(name, ""))
    config = work / "load.toml"
    config.write_text("[encoders]\ncache_size = 0\n")
    keys = write_keys(work / "keys.json", list(SHOPS))
    proc, target = start_tenants_server(tenants_dir, work / "keys.json", config)
    out: dict = {"rates_qps": RATES, "flooded": FLOODED, "flood_qps": 10 * RATES[FLOODED], "seconds": seconds}
    try:
        run_phase(target, keys, {k: v / 2 for k, v in RATES.items()}, 5.0, 99)   # warm-up
        phases = [("normal", RATES), ("flood", {**RATES, FLOODED: 10 * RATES[FLOODED]})]
        for label, rates in phases + phases[::-1]:   # normal, flood, flood, normal: a drift cancels out
            rows = run_phase(target, keys, rates, seconds, 0 if label == "normal" else 1)
            out.setdefault(label, []).append(rows)
            print(f"  {label}: " + "; ".join(f"{t} {r['rate_qps']:g} QPS p50 {r['p50_ms']} p99 {r['p99_ms']} ms "
                                             f"ok {r['ok']}/{r['sent']} {r['errors'] or ''}" for t, r in rows.items()),
                  file=sys.stderr, flush=True)
        out["memory_after_load"] = memory_mb(proc.pid)
    finally:
        stop(proc)
    out["p99_rise_pct"] = {}
    for name in SHOPS:
        if name == FLOODED:
            continue
        normal = [rows[name]["p99_ms"] for rows in out["normal"]]
        flood = [rows[name]["p99_ms"] for rows in out["flood"]]
        out["p99_rise_pct"][name] = round(100 * (float(np.median(flood)) / float(np.median(normal)) - 1), 1)
    out["flood_refused"] = [rows[FLOODED]["errors"] for rows in out["flood"]]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=str(ROOT / "runs" / "speed"), help="where missing models and bundles are built")
    p.add_argument("--work", default=None, help="scratch directory (default: RUNS/tenants-bench)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each load phase")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--prepare-only", action="store_true")
    args = p.parse_args(argv)
    bundles = prepare_all(Path(args.runs))
    if args.prepare_only:
        return 0
    work = Path(args.work or Path(args.runs) / "tenants-bench")
    work.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "bundles": {k: str(v) for k, v in bundles.items()}}
    if not args.skip_memory:
        print("memory:", file=sys.stderr, flush=True)
        result["memory"] = measure_memory(bundles, work)
    print("load:", file=sys.stderr, flush=True)
    result["load"] = measure_load(bundles, work, args.seconds)
    report("tenants", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
