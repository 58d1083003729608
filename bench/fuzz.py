"""Fuzz a running server with malformed Catalog and Search requests; every one must get its expected status.

    python bench/fuzz.py --requests 10000      # last stdout line is a JSON summary

Starts `vitrine serve` on a small BM25-only bundle in a subprocess (so a crash is a dead process,
not a dead test), sends random requests built from hostile values (empty, huge, control characters,
NaN/inf/negative prices, unknown enums, inline image bytes, undecodable bytes), and compares each
status with an independent oracle. It checks health every 500 requests and at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from vitrine.proto import search_pb2, search_pb2_grpc  # noqa: E402

OK, INVALID, PRECONDITION, NOT_FOUND = (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
                                        grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
STRINGS = ["", " ", "a", "red", "ok-id", "x" * 257, "x" * 256, "tab\tid", "nul\x00", "\u00e9t\u00e9", "\U0001F600",
           "a > b > c", "DROP TABLE items;", "(((", "AND OR NOT", "t" * 20_001, "\x7f", "id with space"]
FLOATS = [0.0, 1.5, -1.0, 1e308, float("nan"), float("inf"), -float("inf"), -0.0, 5e-324]
KNOWN_IDS = [f"k{i}" for i in range(10)]


def _text(rng: random.Random) -> str:
    return rng.choice(STRINGS) if rng.random() < 0.8 else "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(0, 40)))


def _id_ok(s: str) -> bool:
    s2 = s.strip()
    return bool(s2) and len(s2) <= 256 and not any(ord(c) < 32 or ord(c) == 127 for c in s2)


def random_item(rng: random.Random) -> tuple[search_pb2.Item, grpc.StatusCode]:
    """An item and the status the oracle expects for upserting it (its own rules, not the server's code)."""
    item = search_pb2.Item(id=rng.choice(KNOWN_IDS) if rng.random() < 0.4 else _text(rng))
    for name in ("title", "description", "category"):
        if rng.random() < 0.5:
            setattr(item, name, _text(rng))
    for _ in range(rng.choice([0, 0, 1, 3, 101])):
        item.attributes[_text(rng)[:50] if rng.random() < 0.9 else ""] = _text(rng)[:50]
    if rng.random() < 0.6:
        item.price = rng.choice(FLOATS)
    if rng.random() < 0.2:
        item.image_uri = rng.choice(["img/a.jpg", "https://x/y.png", "u" * 3000])
    if rng.random() < 0.1:
        item.image = bytes(rng.randrange(256) for _ in range(16))
    return item, expected_item_status(item)


def expected_item_status(item: search_pb2.Item) -> grpc.StatusCode:
    """The oracle: the documented limits of [catalog], written out independently of the server's code."""
    ok = (_id_ok(item.id) and all(len(getattr(item, n)) <= 20_000 for n in ("title", "description", "category"))
          and len(item.attributes) <= 100 and all(k.strip() and v.strip() and len(k) <= 1000 and len(v) <= 1000
                                                  for k, v in item.attributes.items())
          and (not item.HasField("price") or (math.isfinite(item.price) and item.price >= 0))
          and len(item.image_uri) <= 2048)
    # A photo is its bytes or its location, not both; the fuzzer's 16 random bytes never decode as an image.
    return INVALID if not ok or item.image else OK


def random_call(rng: random.Random, unicode_whitespace: bool = True) -> tuple[str, object, set[grpc.StatusCode]]:
    """(method, request, statuses the oracle accepts).

    With `unicode_whitespace=False`, search text has only plain spaces between words: Tantivy's query
    parser rejects \\v, \\f, NBSP, U+3000 and other Unicode spaces that indexer/bm25.py passes through.
    """
    roll = rng.random()
    if roll < 0.35:
        item, code = random_item(rng)
        return "Upsert", [search_pb2.UpsertRequest(item=item)], {code}
    if roll < 0.45:
        patch = search_pb2.ItemPatch(id=rng.choice(KNOWN_IDS + ["unknown-id", "", "nul\x00"]))
        if rng.random() < 0.5:
            patch.price = rng.choice(FLOATS)
        if rng.random() < 0.5:
            patch.attributes[rng.choice(["stock", "", "color"])] = rng.choice(["", "3", "red"])
        ok = (_id_ok(patch.id) and (not patch.HasField("price") or (math.isfinite(patch.price) and patch.price >= 0))
              and all(k.strip() for k in patch.attributes))
        # A valid patch of an id deleted earlier in the run is NOT_FOUND; the oracle does not track deletes.
        return "Upsert", [search_pb2.UpsertRequest(patch=patch)], ({OK, NOT_FOUND} if ok else {INVALID})
    if roll < 0.5:
        return "Upsert", [search_pb2.UpsertRequest()], {INVALID}
    if roll < 0.6:
        ids = [_text(rng) if rng.random() < 0.3 else rng.choice(KNOWN_IDS) for _ in range(rng.choice([0, 1, 3, 1001]))]
        ok = 0 < len(ids) <= 1000 and all(_id_ok(i) for i in ids)
        method = rng.choice(["Delete", "Get"])
        req = search_pb2.DeleteRequest(ids=ids) if method == "Delete" else search_pb2.GetRequest(ids=ids)
        return method, req, {OK} if ok else {INVALID}
    if roll < 0.65:
        return "raw", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), {grpc.StatusCode.INTERNAL, INVALID, OK}
    text = _text(rng) if unicode_whitespace else " ".join(_text(rng).split())
    req = search_pb2.SearchRequest(text=text, k=rng.choice([0, 5, -1, 1001, 2**31 - 1]),
                                   offset=rng.choice([0, 3, -2, 10**6]), fusion=rng.choice([0, 1, 2, 7]))
    if rng.random() < 0.3:
        req.filters[rng.choice(["category", "color", "nope", ""])] = _text(rng)
    if rng.random() < 0.3:
        req.price.min = rng.choice(FLOATS)
    if rng.random() < 0.2:
        req.weights[rng.choice(["bm25", "text", "zzz"])] = rng.choice(FLOATS)
    if rng.random() < 0.2:
        req.sources.append(rng.choice(["bm25", "text", "clip_image", "nope"]))
    if rng.random() < 0.2:
        req.fields.append(rng.choice(["title", "*", "secret"]))
    if rng.random() < 0.1:
        req.image = bytes(rng.randrange(256) for _ in range(32))
    return "Search", req, {OK, INVALID, PRECONDITION}


class Fuzzer:
    def __init__(self, channel: grpc.Channel) -> None:
        self.catalog = search_pb2_grpc.CatalogStub(channel)
        self.search = search_pb2_grpc.SearchStub(channel)
        self.raw = channel.unary_unary("/vitrine.v1.Catalog/Get", request_serializer=None, response_deserializer=None)
        self.health = health_pb2_grpc.HealthStub(channel)

    def call(self, method: str, request: object) -> tuple[grpc.StatusCode, str]:
        try:
            if method == "Upsert":
                list(self.catalog.Upsert(iter(request), timeout=10))
            elif method == "raw":
                self.raw(request, timeout=10)
            else:
                stub = self.search if method == "Search" else self.catalog
                getattr(stub, method)(request, timeout=10)
            return OK, ""
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""

    def healthy(self) -> bool:
        try:
            return self.health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


def fuzz(target: str, n: int, seed: int = 0, unicode_whitespace: bool = True) -> dict:
    rng = random.Random(seed)
    codes: Counter = Counter()
    wrong: list[str] = []
    unhealthy = 0
    with grpc.insecure_channel(target) as channel:
        f = Fuzzer(channel)
        for i in range(n):
            method, request, expected = random_call(rng, unicode_whitespace)
            code, details = f.call(method, request)
            codes[code.name] += 1
            if code not in expected:
                wrong.append(f"{method}: got {code.name} ({details[:120]}), expected {sorted(c.name for c in expected)}")
            if i % 500 == 0 and not f.healthy():
                unhealthy += 1
        healthy = f.healthy()
    return {"requests": n, "statuses": dict(codes), "wrong_status": len(wrong), "examples": wrong[:10],
            "unhealthy_checks": unhealthy, "healthy_at_end": healthy}


def main(argv: list[str] | None = None) -> int:
    from vitrine.cli.demo import start_server
    from vitrine.indexer.bundle import IndexerConfig, build_bundle
    from vitrine.indexer.catalog import Item

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plain-spaces", action="store_true", help="no Unicode whitespace in search text (see random_call)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        build_bundle([Item(id=i, title=f"red item {i}", category="A > B", attributes={"color": "red"}, price=5.0)
                      for i in KNOWN_IDS], bundle, None, IndexerConfig(progress=False))
        proc, target = start_server(bundle)
        try:
            summary = fuzz(target, args.requests, args.seed, unicode_whitespace=not args.plain_spaces)
            summary["server_alive"] = proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            summary["clean_exit"] = proc.wait(timeout=60) == 0
    summary["crashes"] = int(not summary["server_alive"])
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary))
    ok = summary["crashes"] == 0 and summary["wrong_status"] == 0 and summary["healthy_at_end"] and summary["clean_exit"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
