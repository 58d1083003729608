"""Several photos per product, end to end with a tiny CLIP: a batch-indexed item is found by any of its photos and
returned once; a live upsert sends more photos as bytes over gRPC and the item is found by its second photo, also after
a crash (WAL replay) and a clean restart; a replaced item loses its old photo vectors and a deleted one every one."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.server.test_images_e2e import draw, png
from tests.server.test_live_photos import NoModel, drawn_shop
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bundle import Bundle, CatalogSource, IndexerConfig, build_bundle
from vitrine.indexer.catalog import Item
from vitrine.indexer.live import BUNDLE_PHOTO, LiveConfig, LiveIndex, vector_ids
from vitrine.indexer.multiphoto import docnos_of, photo_id
from vitrine.proto import search_pb2
from vitrine.ranking.pipeline import SearchConfig, Searcher, SearchRequest
from vitrine.server.app import create_server, single
from vitrine.server.client import CatalogClient, VitrineClient, item_to_proto, with_photo_bytes
from vitrine.serving.assemble import Served

# Three photos of one product that no other item's photo looks like (jitters far outside the catalog's -2..1).
MULTI = [draw("Red", "Square", 40), draw("Red", "Stripe", -40), draw("Blue", "Square", 60)]
# The attribute boost ranks by what CLIP's heads predict from the photo (README, issue 23); these tests check vectors.
NO_BOOST = SearchConfig(attribute_bonus=0.0)


@pytest.fixture(scope="module")
def multi_bundle(tmp_path_factory, keyword_encoder):
    """24 drawn one-photo products, "multi" with the three MULTI photos, a tiny CLIP trained on the products."""
    root = tmp_path_factory.mktemp("multicat")
    items, clip = drawn_shop(root, tmp_path_factory.mktemp("tinyclip-multi"))
    for j, photo in enumerate(MULTI):
        photo.save(root / "images" / f"multi-{j}.png")
    items.append(Item(id="multi", title="Red Square set", image="images/multi-0.png",
                      extra_images=("images/multi-1.png", "images/multi-2.png")))
    out = tmp_path_factory.mktemp("multi-bundle") / "bundle"
    build_bundle(items, out, keyword_encoder, IndexerConfig(ann=AnnConfig(factory="Flat"), onnx=False, progress=False),
                 clip_encoder=clip, source=CatalogSource(dir=root, path=str(root / "catalog.jsonl")))
    return out, clip


@pytest.fixture()
def bundle_path(multi_bundle, tmp_path):
    path = tmp_path / "live"
    shutil.copytree(multi_bundle[0], path)
    return path


def image_hits(searcher: Searcher, photo, k: int = 10) -> list[str]:
    return [h.id for h in searcher.search(SearchRequest(image=png(photo), k=k, sources=["clip_image"])).hits]


def test_a_batch_indexed_item_is_found_by_any_of_its_photos_and_returned_once(multi_bundle, keyword_encoder):
    path, clip = multi_bundle
    bundle = Bundle(path)
    try:
        assert bundle.max_extra_photos == 2 and bundle.manifest.counts.images == 27
        searcher = Searcher(bundle, keyword_encoder, NO_BOOST, clip_encoder=clip)
        for photo in MULTI:
            hits = image_hits(searcher, photo)
            assert hits[0] == "multi" and len(hits) == len(set(hits)) == 10
        # CLIP text queries search the same photo index: each item once there too.
        hits = [h.id for h in searcher.search(SearchRequest(text="Red Square", k=25, sources=["clip_text"])).hits]
        assert len(hits) == len(set(hits)) == 25
    finally:
        bundle.close()


def _serve(path: Path, clip, keyword_encoder, model=None):
    bundle = Bundle(path)
    live = LiveIndex(bundle, keyword_encoder, LiveConfig(), model or clip)  # not started: no background checkpoint
    server = create_server(single(Served(Searcher(bundle, keyword_encoder, NO_BOOST, clip_encoder=clip)), live),
                           "127.0.0.1:0")
    return bundle, live, server


def _grpc_hits(port: int, photo) -> list[str]:
    with VitrineClient(f"127.0.0.1:{port}") as client:
        return [h.id for h in client.search(image=png(photo), k=10, sources=["clip_image"]).hits]


def _photo_ids(bundle: Bundle, item_id: str) -> set[int]:
    docno = bundle.docstore.docno_by_id[item_id]
    return {photo_id(docno, j) for j in range(3)}


def test_grpc_upsert_of_extra_photos_as_bytes_is_searchable_by_the_second_photo_after_a_crash_and_a_restart(
        bundle_path, multi_bundle, keyword_encoder):
    _, clip = multi_bundle
    photos = [draw("Green", "Stripe", 50), draw("Blue", "Stripe", -50), draw("Green", "Square", 70)]
    bundle, live, served = _serve(bundle_path, clip, keyword_encoder)
    with CatalogClient(f"127.0.0.1:{served.port}") as catalog:
        item = search_pb2.Item(id="live", title="Green Stripe set", image=png(photos[0]),
                               images=[png(photos[1]), png(photos[2])])
        assert [a.id for a in catalog.upsert([search_pb2.UpsertRequest(item=item)])] == ["live"]
        stored = catalog.get(["live"])[0]
    assert len(stored["images"]) == 3 and all(p.startswith(BUNDLE_PHOTO + "photos/") for p in stored["images"])
    assert stored["image"] == stored["images"][0]
    assert _photo_ids(bundle, "live") <= vector_ids(bundle.vectors["clip_image"].index)
    assert _grpc_hits(served.port, photos[1])[0] == "live"
    # A crash before any checkpoint: the WAL alone restores every photo's vector, with no CLIP to encode anything.
    served.server.stop(0)
    assert live.wal.records == 1  # not checkpointed: the restart must replay it
    bundle.bm25._writer = None
    live.wal.close()
    live._writer_lock.release()
    bundle, live, served = _serve(bundle_path, clip, keyword_encoder, NoModel())
    try:
        assert _photo_ids(bundle, "live") <= vector_ids(bundle.vectors["clip_image"].index)  # reconcile kept them
        assert _grpc_hits(served.port, photos[1])[0] == "live"
        assert bundle.manifest.counts.max_extra_photos == 2  # the replay's checkpoint wrote it
    finally:
        served.server.stop(0)
        live.close()
        bundle.close()
    bundle, live, served = _serve(bundle_path, clip, keyword_encoder)  # a clean restart: from the checkpoint
    try:
        assert _grpc_hits(served.port, photos[2])[0] == "live"
    finally:
        served.server.stop(0)
        live.close()
        bundle.close()


def test_replacing_an_item_drops_its_old_photo_vectors_keeping_unchanged_photos_and_delete_drops_every_one(
        bundle_path, multi_bundle, keyword_encoder):
    _, clip = multi_bundle
    bundle = Bundle(bundle_path)
    live = LiveIndex(bundle, keyword_encoder, LiveConfig(), clip)
    index = bundle.vectors["clip_image"]
    try:
        old = bundle.docstore.docno_by_id["multi"]
        before = index.reconstruct(np.array(sorted(_photo_ids(bundle, "multi"))))
        item = live.get(["multi"])[0]
        assert live.upsert([Item(**{**item.__dict__, "title": "Red Square set, renamed"})]) == 1
        new = bundle.docstore.docno_by_id["multi"]
        ids = vector_ids(index.index)
        assert not {i for i in ids if docnos_of(np.array([i]))[0] == old}  # every old photo vector is gone
        np.testing.assert_array_equal(index.reconstruct(np.array(sorted(_photo_ids(bundle, "multi")))), before)
        assert live.upsert([Item(id="multi", title="one photo now", image=item.image)]) == 1
        newest = bundle.docstore.docno_by_id["multi"]
        assert {i for i in vector_ids(index.index) if docnos_of(np.array([i]))[0] in (new, newest)} == {newest}
        assert live.delete(["multi"]) == 1
        assert not {i for i in vector_ids(index.index) if docnos_of(np.array([i]))[0] == newest}
        assert "multi" not in image_hits(Searcher(bundle, keyword_encoder, NO_BOOST, clip_encoder=clip), MULTI[1])
    finally:
        live.close()
        bundle.close()


def test_upsert_refuses_too_many_photos_and_a_bad_extra_photo_naming_the_field(bundle_path, multi_bundle,
                                                                               keyword_encoder):
    _, clip = multi_bundle
    bundle, live, served = _serve(bundle_path, clip, keyword_encoder)
    try:
        with CatalogClient(f"127.0.0.1:{served.port}") as catalog:
            too_many = search_pb2.Item(id="x", image_uri="a.png", image_uris=[f"{n}.png" for n in range(16)])
            bad = search_pb2.Item(id="y", title="y", image=png(MULTI[0]), images=[b"\x89PNG not really"])
            for msg, field in ((too_many, "item.images:"), (bad, "item.images[0]:")):
                with pytest.raises(grpc.RpcError) as err:
                    list(catalog.upsert([search_pb2.UpsertRequest(item=msg)]))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert err.value.details().startswith(field), err.value.details()
                assert catalog.get([msg.id]) == []
    finally:
        served.server.stop(0)
        live.close()
        bundle.close()


def test_the_client_sends_each_local_photo_as_bytes_and_keeps_urls(tmp_path, capsys):
    for n in range(3):
        MULTI[n].save(tmp_path / f"{n}.png")
    item = Item(id="c", title="t", image="0.png", extra_images=("http://shop/x.jpg", "1.png", str(tmp_path / "2.png")))
    sent = with_photo_bytes(search_pb2.UpsertRequest(item=item_to_proto(item)), tmp_path).item
    assert sent.image == png_bytes(tmp_path / "0.png") and sent.image_uri == ""
    assert list(sent.image_uris) == ["http://shop/x.jpg"]
    assert list(sent.images) == [png_bytes(tmp_path / "1.png"), png_bytes(tmp_path / "2.png")]
    from vitrine.cli.main import main

    catalog = tmp_path / "c.jsonl"
    catalog.write_text(json.dumps({"id": "c", "image": "0.png", "images": ["1.png", "typo.png"]}) + "\n")
    assert main(["upsert", "--target", "127.0.0.1:9", "--catalog", str(catalog)]) == 2  # refused before connecting
    assert "typo.png" in capsys.readouterr().err


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()
