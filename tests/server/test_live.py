"""Live catalog updates: WAL framing and replay, consistent apply across BM25/FAISS/docstore, snapshots, gRPC and CLI."""
from __future__ import annotations

import gc
import json
import shutil
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vitrine.cli.main import main
from vitrine.indexer.bundle import Bundle
from vitrine.indexer.catalog import Item
from vitrine.indexer.live import LiveConfig, LiveIndex, Wal, bm25_docnos, vector_ids
from vitrine.proto import search_pb2
from vitrine.ranking.pipeline import Searcher, SearchRequest
from vitrine.serving.assemble import Served
from vitrine.server.app import ServerOptions, create_server, single
from vitrine.server.catalog_service import CatalogConfig
from vitrine.server.client import CatalogClient, VitrineClient
from vitrine.server.status import Metrics

TOKEN = "s3cret-token-for-tests"


@pytest.fixture()
def bundle_copy(small_bundle_path, tmp_path):
    path = tmp_path / "live"
    shutil.copytree(small_bundle_path, path)
    return path


@pytest.fixture()
def live(bundle_copy, keyword_encoder):
    bundle = Bundle(bundle_copy)
    index = LiveIndex(bundle, keyword_encoder, LiveConfig(commit_interval_s=0.05))
    yield index
    index.close()
    bundle.close()


def ids_of(searcher: Searcher, text: str, **kw) -> list[str]:
    return [h.id for h in searcher.search(SearchRequest(text=text, k=20, **kw)).hits]


def assert_consistent(bundle: Bundle) -> None:
    """Every store holds exactly the docstore's doc numbers: no ghost, no hole."""
    live = set(bundle.docstore.items)
    assert set(bm25_docnos(bundle.bm25)) == live
    text = {d for d, it in bundle.docstore.items.items() if it.has_text()}
    assert vector_ids(bundle.vectors["text"].index) == text


def test_wal_drops_a_torn_tail_and_keeps_intact_records(tmp_path):
    wal = Wal(tmp_path / "wal.log")
    for n in range(3):
        wal.append({"seq": n, "op": "delete", "ids": [str(n)]})
    good = wal.size_bytes()
    wal.close()
    with open(tmp_path / "wal.log", "ab") as f:
        f.write(b"VW\x10\x00\x00\x00\x00\x00\x00\x00{\"seq\"")  # a header promising 16 bytes, then a crash
    wal = Wal(tmp_path / "wal.log")
    assert [r["seq"] for r in wal.replay()] == [0, 1, 2]
    assert (tmp_path / "wal.log").stat().st_size == good
    wal.close()
    raw = bytearray((tmp_path / "wal.log").read_bytes())
    raw[-2] ^= 0xFF  # a flipped bit in the last record fails its CRC
    (tmp_path / "wal.log").write_bytes(bytes(raw))
    wal = Wal(tmp_path / "wal.log")
    assert [r["seq"] for r in wal.replay()] == [0, 1]
    wal.close()


def test_upsert_delete_patch_are_visible_and_consistent(live, keyword_encoder):
    searcher = Searcher(live.bundle, keyword_encoder)
    assert live.upsert([Item(id="9", title="Green Bag", category="Accessories > Bags", attributes={"color": "Green"}, price=15.0)]) == 1
    live.commit()
    assert ids_of(searcher, "green bag")[0] == "9"
    assert ids_of(searcher, "green bag", sources=["text"])[0] == "9"
    # Replacing the whole item moves it to a new doc number in every store; the old one never returns.
    old_docno = live.bundle.docstore.docno_by_id["1"]
    live.upsert([Item(id="1", title="Azure Watch", category="Accessories > Watches", attributes={"color": "Blue"}, price=99.0)])
    live.commit()
    assert "1" not in ids_of(searcher, "red shirt", sources=["bm25"])
    assert sorted(ids_of(searcher, "red shirt", sources=["text"])[:2]) == ["2", "4"]  # was "1"; Flat ranks every vector
    assert "1" in ids_of(searcher, "blue watch", price_min=90.0)
    assert old_docno not in vector_ids(live.bundle.vectors["text"].index)
    # A patch changes price and attributes in place: same doc number, same vector, new filters.
    docno = live.bundle.docstore.docno_by_id["4"]
    merged = live.patch("4", price=5.0, attributes={"stock": "0", "gender": ""})
    assert merged.price == 5.0 and merged.attributes == {"color": "Red", "stock": "0"}
    live.commit()
    assert live.bundle.docstore.docno_by_id["4"] == docno
    assert ids_of(searcher, "dress", price_max=10.0) == ["4"]
    assert "4" in ids_of(searcher, "dress", filters={"stock": "0"})
    assert "4" not in ids_of(searcher, "dress", filters={"gender": "Women"})
    assert live.patch("nope", price=1.0) is None
    # Deletes disappear from every source at once, even before Tantivy commits.
    assert live.delete(["3", "3", "missing"]) == 1
    assert "3" not in ids_of(searcher, "black dress")
    assert live.delete(["3"]) == 0
    live.commit()
    assert_consistent(live.bundle)
    assert [it.id for it in live.get(["9", "3", "4"])] == ["9", "4"]


def test_upsert_of_an_identical_item_is_a_no_op(live):
    item = live.bundle.docstore.get("2")
    records = live.wal.records
    assert live.upsert([item]) == 0
    assert live.wal.records == records
    with pytest.raises(ValueError, match="'x' appears more than once"):  # refused, as a catalog file's duplicate is
        live.upsert([Item(id="x", title="a"), Item(id="x", title="b")])
    assert live.get(["x"]) == [] and live.wal.records == records


def test_restart_without_checkpoint_replays_the_wal(bundle_copy, keyword_encoder):
    bundle = Bundle(bundle_copy)
    live = LiveIndex(bundle, keyword_encoder)
    live.upsert([Item(id="9", title="Green Bag", price=15.0)])
    live.delete(["5"])
    live.patch("2", price=1.0)
    # A crash: no checkpoint, Tantivy never committed, FAISS never saved; the WAL is all that is durable.
    bundle.bm25._writer = None
    live.wal.close()
    live._writer_lock.release()  # the kernel drops a dead process's flock
    del live, bundle
    gc.collect()
    bundle = Bundle(bundle_copy)
    live = LiveIndex(bundle, keyword_encoder)
    try:
        assert live.wal.records == 0  # replayed, reconciled and checkpointed
        assert {it.id for it in live.get(["9", "5", "2"])} == {"9", "2"}
        assert live.get(["2"])[0].price == 1.0
        assert_consistent(bundle)
        searcher = Searcher(bundle, keyword_encoder)
        assert ids_of(searcher, "green bag")[0] == "9" and "5" not in ids_of(searcher, "green shoe")
    finally:
        live.close()
        bundle.close()


def test_replaying_records_that_are_already_applied_changes_nothing(bundle_copy, keyword_encoder):
    bundle = Bundle(bundle_copy)
    live = LiveIndex(bundle, keyword_encoder)
    live.upsert([Item(id="9", title="Green Bag")])
    live.delete(["5"])
    wal_bytes = (bundle_copy / "wal.log").read_bytes()
    live.close()  # checkpoints and truncates
    bundle.close()
    (bundle_copy / "wal.log").write_bytes(wal_bytes)  # as if the crash came after the checkpoint, before truncation
    bundle = Bundle(bundle_copy)
    live = LiveIndex(bundle, keyword_encoder)
    try:
        assert sorted(bundle.docstore.docno_by_id) == ["1", "2", "3", "4", "6", "7", "8", "9"]
        assert_consistent(bundle)
    finally:
        live.close()
        bundle.close()


def test_snapshot_is_a_servable_copy(live, keyword_encoder, tmp_path):
    live.upsert([Item(id="9", title="Green Bag", price=15.0)])
    live.delete(["1"])
    manifest = live.snapshot(tmp_path / "snap")
    assert manifest.counts.items == 8 and manifest.snapshot_of == live.bundle.version
    with pytest.raises(FileExistsError):
        live.snapshot(tmp_path / "snap")
    snap = Bundle(tmp_path / "snap")
    try:
        assert snap.version != live.bundle.version and not (tmp_path / "snap" / "wal.log").exists()
        assert_consistent(snap)
        live.commit()
        assert ids_of(Searcher(snap, keyword_encoder), "green bag") == ids_of(Searcher(live.bundle, keyword_encoder), "green bag")
    finally:
        snap.close()


# ----- over gRPC --------------------------------------------------------------------------------------


@pytest.fixture()
def served(live, keyword_encoder):
    metrics = Metrics()
    served = create_server(single(Served(Searcher(live.bundle, keyword_encoder)), live, catalog=CatalogConfig(auth_token=TOKEN)),
                           "127.0.0.1:0", ServerOptions(metrics=metrics))
    server, port = served.server, served.port
    live.start()
    yield f"127.0.0.1:{port}", metrics
    server.stop(0)


def test_grpc_upsert_stream_acks_and_search_sees_it_within_a_second(served):
    target, _ = served
    items = [Item(id=f"n{i}", title=f"Green Bag number{i}", price=10.0 + i) for i in range(5)]
    with CatalogClient(target, TOKEN) as catalog, VitrineClient(target) as client:
        acks = [a.id for a in catalog.upsert_items(items)]
        assert acks == [f"n{i}" for i in range(5)]
        t0 = time.perf_counter()
        while "n3" not in {h.id for h in client.search("number3", k=5, sources=["bm25"]).hits}:
            assert time.perf_counter() - t0 < 1.0
            time.sleep(0.02)
        assert catalog.patch("n3", price=500.0).changed
        assert catalog.delete(["n0", "n1", "zzz"]) == 2
        t0 = time.perf_counter()
        while [h.id for h in client.search("bag", k=20, price_min=400.0).hits] != ["n3"]:
            assert time.perf_counter() - t0 < 1.0
            time.sleep(0.02)
        assert not {"n0", "n1"} & {h.id for h in client.search("green bag", k=50).hits}
        got = catalog.get(["n3", "n0"])
        assert got == [{"id": "n3", "title": "Green Bag number3", "price": 500.0}]


@pytest.mark.parametrize("request_,field", [
    (search_pb2.UpsertRequest(), "item"),
    (search_pb2.UpsertRequest(item=search_pb2.Item(id=" ")), "item.id"),
    (search_pb2.UpsertRequest(item=search_pb2.Item(id="a\x00b")), "item.id"),
    (search_pb2.UpsertRequest(item=search_pb2.Item(id="x" * 300)), "item.id"),
    (search_pb2.UpsertRequest(item=search_pb2.Item(id="a", price=float("nan"))), "item.price"),
    (search_pb2.UpsertRequest(item=search_pb2.Item(id="a", price=-1.0)), "item.price"),
    (search_pb2.UpsertRequest(item=search_pb2.Item(id="a", title="t" * 20_001)), "item.title"),
    (search_pb2.UpsertRequest(item=search_pb2.Item(id="a", attributes={"": "x"})), "item.attributes"),
    (search_pb2.UpsertRequest(item=search_pb2.Item(id="a", attributes={"color": " "})), "item.attributes.color"),
    (search_pb2.UpsertRequest(patch=search_pb2.ItemPatch(id="")), "patch.id"),
    (search_pb2.UpsertRequest(patch=search_pb2.ItemPatch(id="1", price=float("inf"))), "patch.price"),
])
def test_bad_upserts_get_invalid_argument_naming_the_field(served, request_, field):
    target, _ = served
    with CatalogClient(target, TOKEN) as catalog:
        with pytest.raises(grpc.RpcError) as err:
            list(catalog.upsert([request_]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(field + ":")
        assert catalog.get(["2"])  # still healthy


def test_writes_need_the_token_and_other_statuses(served):
    target, _ = served
    with CatalogClient(target, token="wrong") as bad, CatalogClient(target, TOKEN) as good:
        for call in (lambda: list(bad.upsert_items([Item(id="z")])), lambda: bad.delete(["1"]), lambda: bad.snapshot("/tmp/x")):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert bad.get(["1"])  # reads need no token
        with pytest.raises(grpc.RpcError) as err:
            good.patch("unknown", price=1.0)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            good.delete([f"i{n}" for n in range(1001)])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("ids:")
        with pytest.raises(grpc.RpcError) as err:
            list(good.upsert([search_pb2.UpsertRequest(item=search_pb2.Item(id="a", image=b"\x89PNG"))]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("item.image:")


def test_metrics_report_rpcs_stages_and_wal(served):
    target, metrics = served
    with CatalogClient(target, TOKEN) as catalog, VitrineClient(target) as client:
        list(catalog.upsert_items([Item(id="m", title="red bag")]))
        client.search("red", k=3)
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert 'vitrine_rpc_requests_total{code="OK",rpc="Upsert"} 1.0' in text
    assert 'vitrine_stage_latency_seconds_count{stage="bm25"}' in text
    assert "vitrine_wal_records" in text and "vitrine_items 9.0" in text


def test_health_is_not_serving_until_the_bundle_is_attached(bundle_copy, keyword_encoder):
    served = create_server(single(None), "127.0.0.1:0")
    server, port = served.server, served.port
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            assert check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                VitrineClient(f"127.0.0.1:{port}").search("red")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            bundle = Bundle(bundle_copy)
            live = LiveIndex(bundle, keyword_encoder)
            served.attach(Served(Searcher(bundle, keyword_encoder)), live)
            assert check(health_pb2.HealthCheckRequest(service="vitrine.v1.Catalog")).status == health_pb2.HealthCheckResponse.SERVING
            assert VitrineClient(f"127.0.0.1:{port}").search("red").hits
            live.close()
            bundle.close()
    finally:
        server.stop(0)


def test_cli_upsert_get_delete_snapshot(served, tmp_path, capsys):
    target, _ = served
    catalog = tmp_path / "items.jsonl"
    catalog.write_text('{"id": "c1", "title": "Crimson Dress", "price": 30}\n{"id": "c2", "title": "Azure Shoe", "image": "https://cdn.example/c2.jpg"}\n')
    assert main(["upsert", "--target", target, "--catalog", str(catalog), "--token", TOKEN]) == 0
    assert capsys.readouterr().out.splitlines() == ["ack c1", "ack c2"]
    assert main(["get", "--target", target, "--ids", "c2,c1,none"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [{"id": "c2", "title": "Azure Shoe", "image": "https://cdn.example/c2.jpg"}, {"id": "c1", "title": "Crimson Dress", "price": 30.0}]
    patches = tmp_path / "p.jsonl"
    patches.write_text('{"id": "c1", "price": 12.5, "attributes": {"stock": 3}}\n')
    assert main(["upsert", "--target", target, "--catalog", str(patches), "--patch", "--token", TOKEN]) == 0
    assert capsys.readouterr().out.strip() == "ack c1"
    assert main(["delete", "--target", target, "--ids", "c1", "--token", TOKEN]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": 1}
    assert main(["delete", "--target", target, "--ids", "c2"]) == 1  # no token
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main(["snapshot", "--target", target, "--out", str(tmp_path / "snap"), "--token", TOKEN]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 9
