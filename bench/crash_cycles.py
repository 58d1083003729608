"""Kill -9 the server at random moments during acknowledged upserts, patches and deletes; restart; check nothing acked is lost.

    python bench/crash_cycles.py --cycles 50      # last stdout line is a JSON summary

Each cycle starts `vitrine serve` on a BM25-only bundle (fast start; the server cannot run the test's
keyword encoder), drives writes in lockstep (the next write is sent only after the previous ack, so at
most one is in flight when the kill lands), SIGKILLs it after a random delay, restarts it, and checks:
every id holds the state of its last acknowledged write (or of the one in-flight write), every stored
item is whole, BM25 finds each present item by its unique token and never returns a deleted one.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vitrine.cli.demo import start_server  # noqa: E402
from vitrine.indexer.bundle import IndexerConfig, build_bundle  # noqa: E402
from vitrine.indexer.catalog import Item, item_from_dict  # noqa: E402
from vitrine.proto import search_pb2  # noqa: E402
from vitrine.server.client import (  # noqa: E402
    CatalogClient,
    VitrineClient,  # noqa: E402
    item_to_proto,
)

IDS = [f"p{i}" for i in range(40)]


def _item(item_id: str, version: int, price: float) -> Item:
    return Item(id=item_id, title=f"product {item_id} tok{item_id}v{version}", category="Test > Crash",
                attributes={"version": str(version)}, price=price)


def _writes(target: str, model: dict, rng: random.Random, stop: threading.Event, state: dict) -> None:
    """Sends writes one at a time; `model` holds the state after every acked write, `state['inflight']` the pending one."""
    requests: queue.Queue = queue.Queue()
    client = CatalogClient(target, timeout_s=10.0)
    acks = client.upsert(iter(requests.get, None))
    try:
        while not stop.is_set():
            item_id = rng.choice(IDS)
            roll = rng.random()
            current = model.get(item_id)
            if roll < 0.2:
                state["inflight"] = (item_id, None)
                client.delete([item_id])
            elif roll < 0.35 and current is not None:
                price = round(rng.uniform(1, 500), 2)
                new = Item(**{**current.__dict__, "price": price})
                state["inflight"] = (item_id, new)
                requests.put(search_pb2.UpsertRequest(patch=search_pb2.ItemPatch(id=item_id, price=price)))
                assert next(acks).id == item_id
            else:
                state["version"] += 1
                new = _item(item_id, state["version"], round(rng.uniform(1, 500), 2))
                state["inflight"] = (item_id, new)
                requests.put(search_pb2.UpsertRequest(item=item_to_proto(new)))
                assert next(acks).id == item_id
            model[item_id] = state["inflight"][1]
            state["inflight"] = None
            state["acked"] += 1
    except Exception as exc:  # noqa: BLE001 - the kill ends the stream; anything else is reported
        state["error"] = None if stop.is_set() or "UNAVAILABLE" in str(exc) or "CANCELLED" in str(exc) else repr(exc)
    finally:
        requests.put(None)
        client.close()


def _verify(target: str, model: dict, inflight: tuple | None) -> list[str]:
    """Checks the restarted server against `model`, then adopts the in-flight write's observed outcome into it."""
    problems = []
    with CatalogClient(target) as catalog, VitrineClient(target) as search:
        stored = {d["id"]: d for d in catalog.get(IDS)}
        time.sleep(0.6)  # Tantivy commit interval after replay is well under this
        for item_id in IDS:
            want = model.get(item_id)
            allowed = [None if want is None else want.to_dict()]
            if inflight is not None and inflight[0] == item_id:
                allowed.append(None if inflight[1] is None else inflight[1].to_dict())
            got = stored.get(item_id)
            if got not in allowed:
                problems.append(f"{item_id}: stored {got} but acked state is {allowed[0]}")
                continue
            if got is not None:
                token = got["title"].split()[-1]
                hits = [h.id for h in search.search(token, k=5, sources=["bm25"]).hits]
                if hits[:1] != [item_id]:
                    problems.append(f"{item_id}: BM25 search for {token} returned {hits}")
        found = [h.id for h in search.search("product", k=100, sources=["bm25"]).hits]
        if sorted(found) != sorted(stored):
            problems.append(f"BM25 holds {sorted(found)} but the docstore holds {sorted(stored)}")
    if inflight is not None:  # it either landed or not; from now on that outcome is the durable state
        got = stored.get(inflight[0])
        model[inflight[0]] = None if got is None else item_from_dict(got)
    return problems


def run_cycles(cycles: int, workdir: Path, seed: int = 0, max_delay_s: float = 1.5) -> dict:
    rng = random.Random(seed)
    bundle = workdir / "bundle"
    build_bundle([_item(i, 0, 10.0) for i in IDS[:20]], bundle, None, IndexerConfig(progress=False))
    model: dict = {i: _item(i, 0, 10.0) for i in IDS[:20]}
    state = {"version": 0, "acked": 0, "inflight": None, "error": None}
    lost, errors, starts = 0, [], []
    for cycle in range(cycles):
        t0 = time.perf_counter()
        proc, target = start_server(bundle)
        starts.append(time.perf_counter() - t0)
        problems = _verify(target, model, state["inflight"]) if cycle else []
        if problems:
            lost += len(problems)
            errors.extend(f"cycle {cycle}: {p}" for p in problems[:5])
        state["inflight"] = None
        stop = threading.Event()
        writer = threading.Thread(target=_writes, args=(target, model, rng, stop, state))
        writer.start()
        time.sleep(rng.uniform(0.05, max_delay_s))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        writer.join(timeout=30)
        if state["error"]:
            errors.append(f"cycle {cycle}: writer {state['error']}")
            state["error"] = None
    proc, target = start_server(bundle)
    problems = _verify(target, model, state["inflight"])
    lost += len(problems)
    errors.extend(f"final: {p}" for p in problems[:5])
    proc.send_signal(signal.SIGTERM)
    clean_exit = proc.wait(timeout=60) == 0
    return {"cycles": cycles, "acked_writes": state["acked"], "acked_writes_lost_or_wrong": lost,
            "errors": errors[:20], "clean_final_shutdown": clean_exit,
            "restart_s_median": round(sorted(starts)[len(starts) // 2], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-delay", type=float, default=1.5, help="longest time between start and kill, seconds")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_cycles(args.cycles, Path(tmp), args.seed, args.max_delay)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary))
    return 0 if summary["acked_writes_lost_or_wrong"] == 0 and not summary["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
