"""Live writes are multimodal: a photo upserted (bytes or a path) becomes image-searchable, survives restarts from the
WAL alone and snapshots; an upsert that keeps the photo keeps its vector; bad photos are refused naming the field;
one writer per bundle."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.conftest import make_items
from tests.server.test_images_e2e import draw, png
from tests.trainer.test_clip_trainer import TINY_CFG
from vitrine.encoders.clip import ClipEncoder
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bundle import Bundle, CatalogSource, IndexerConfig, build_bundle
from vitrine.indexer.catalog import Item
from vitrine.indexer.live import BUNDLE_PHOTO, LiveConfig, LiveIndex
from vitrine.indexer.lock import BundleLocked
from vitrine.proto import search_pb2
from vitrine.ranking.pipeline import Searcher, SearchRequest
from vitrine.server.app import create_server, single
from vitrine.serving.assemble import Served
from vitrine.server.client import CatalogClient
from vitrine.trainer.clip import ClipTrainConfig, ClipTrainer, load_pairs


def drawn_shop(root: Path, model_dir: Path) -> tuple[list[Item], ClipEncoder]:
    """24 drawn products (colour x kind) under root/images, and a tiny CLIP trained on them in model_dir."""
    (root / "images").mkdir()
    items = []
    for n, (color, kind) in enumerate([(c, k) for c in ("Red", "Green", "Blue") for k in ("Square", "Stripe")] * 4):
        draw(color, kind, n % 4 - 2).save(root / "images" / f"{n}.png")
        items.append(Item(id=str(n), title=f"{color} {kind}", attributes={"color": color, "kind": kind},
                          image=f"images/{n}.png"))
    cfg = ClipTrainConfig(epochs=10, batch_size=12, lr=3e-3, warmup_steps=2, holdout=4, patience=10, image_size=16,
                          freeze_text="none", hflip=False)
    ClipTrainer(cfg, model_dir, device="cpu", log=lambda s: None, model_cfg=TINY_CFG).fit(
        load_pairs(items, root, 16, progress=False), progress=False)
    return items, ClipEncoder(str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def clip_bundle(tmp_path_factory, keyword_encoder):
    """A bundle of 24 drawn products (colour x kind) with a tiny CLIP trained on them, and that CLIP."""
    root = tmp_path_factory.mktemp("photocat")
    items, clip = drawn_shop(root, tmp_path_factory.mktemp("tinyclip-live"))
    out = tmp_path_factory.mktemp("photo-bundle") / "bundle"
    build_bundle(items, out, keyword_encoder, IndexerConfig(ann=AnnConfig(factory="Flat"), onnx=False, progress=False),
                 clip_encoder=clip, source=CatalogSource(dir=root, path=str(root / "catalog.jsonl")))
    return out, clip, root


@pytest.fixture()
def bundle_path(clip_bundle, tmp_path):
    path = tmp_path / "live"
    shutil.copytree(clip_bundle[0], path)
    return path


class NoModel:
    """A CLIP that fails the test if used: replay must need no model."""

    image_size = 16

    def __getattr__(self, name):
        raise AssertionError(f"replay used the model ({name})")


def stored_clip(bundle: Bundle, item_id: str) -> np.ndarray:
    docno = bundle.docstore.docno_by_id[item_id]
    return bundle.vectors["clip_image"].reconstruct(np.array([docno]))[0]


def photo_hits(bundle: Bundle, clip: ClipEncoder, keyword_encoder, image) -> list[str]:
    searcher = Searcher(bundle, keyword_encoder, clip_encoder=clip)
    return [h.id for h in searcher.search(SearchRequest(image=png(image), k=5, sources=["clip_image"])).hits]


def test_a_photo_sent_as_bytes_is_searchable_kept_in_the_bundle_and_replayed_without_a_model(
        bundle_path, clip_bundle, keyword_encoder):
    _, clip, _ = clip_bundle
    photo = draw("Blue", "Stripe", 7)  # a new jitter: no indexed photo is this one
    bundle = Bundle(bundle_path)
    live = LiveIndex(bundle, keyword_encoder, LiveConfig(), clip)
    assert live.upsert([Item(id="new", title="Blue Stripe poster")], photos={"new": png(photo)}) == 1
    stored = live.get(["new"])[0]
    assert stored.image.startswith(BUNDLE_PHOTO + "photos/") and (bundle_path / stored.image[len(BUNDLE_PHOTO):]).is_file()
    np.testing.assert_allclose(stored_clip(bundle, "new"), clip.encode_images([photo])[0], atol=1e-5)
    assert photo_hits(bundle, clip, keyword_encoder, photo)[0] == "new"
    # A crash before any checkpoint: the WAL alone restores the vector, with no CLIP to encode anything.
    bundle.bm25._writer = None
    live.wal.close()
    live._writer_lock.release()
    expected = stored_clip(bundle, "new")
    bundle = Bundle(bundle_path)
    live = LiveIndex(bundle, keyword_encoder, LiveConfig(), NoModel())
    try:
        np.testing.assert_allclose(stored_clip(bundle, "new"), expected, atol=1e-6)
        assert photo_hits(bundle, clip, keyword_encoder, photo)[0] == "new"
    finally:
        live.close()
        bundle.close()


def test_an_upsert_that_keeps_the_photo_keeps_the_vector_and_a_text_only_item_gets_a_clip_text_vector(
        bundle_path, clip_bundle, keyword_encoder):
    _, clip, root = clip_bundle
    bundle = Bundle(bundle_path)
    live = LiveIndex(bundle, keyword_encoder, LiveConfig(), clip)
    try:
        before = stored_clip(bundle, "3")
        item = live.get(["3"])[0]
        assert live.upsert([Item(**{**item.__dict__, "title": "Green Stripe renamed"})]) == 1
        np.testing.assert_array_equal(stored_clip(bundle, "3"), before)  # same photo: the stored vector, not re-read
        assert "3" in photo_hits(bundle, clip, keyword_encoder, draw("Green", "Stripe", 3 % 4 - 2))[:2]  # 15 is the same drawing
        assert live.upsert([Item(id="poster", title="Red Square poster", attributes={"color": "Red"})]) == 1
        from vitrine.indexer.bundle import clip_item_text
        np.testing.assert_allclose(stored_clip(bundle, "poster"),
                                   clip.encode_texts([clip_item_text(live.get(["poster"])[0])])[0], atol=1e-5)
        # A path the server can read is read, encoded, and kept as the shop's location.
        assert live.upsert([Item(id="by-path", title="Red Stripe", image=str(root / "images" / "1.png"))]) == 1
        assert live.get(["by-path"])[0].image == str(root / "images" / "1.png")
        np.testing.assert_allclose(stored_clip(bundle, "by-path"), stored_clip(bundle, "1"), atol=1e-5)
        # A new photo replaces the vector.
        assert live.upsert([Item(id="3", title="now blue", image=str(root / "images" / "4.png"))]) == 1
        np.testing.assert_allclose(stored_clip(bundle, "3"), stored_clip(bundle, "4"), atol=1e-5)
    finally:
        live.close()
        bundle.close()


def test_snapshot_carries_live_photos_and_their_vectors(bundle_path, clip_bundle, keyword_encoder, tmp_path):
    _, clip, _ = clip_bundle
    photo = draw("Red", "Square", 9)
    bundle = Bundle(bundle_path)
    live = LiveIndex(bundle, keyword_encoder, LiveConfig(), clip)
    try:
        live.upsert([Item(id="snap", title="Red Square")], photos={"snap": png(photo)})
        live.snapshot(tmp_path / "snap")
    finally:
        live.close()
        bundle.close()
    snap = Bundle(tmp_path / "snap")
    try:
        image = snap.docstore.get("snap").image
        assert (tmp_path / "snap" / image[len(BUNDLE_PHOTO):]).is_file()
        assert photo_hits(snap, clip, keyword_encoder, photo)[0] == "snap"
    finally:
        snap.close()


@pytest.fixture()
def served(bundle_path, clip_bundle, keyword_encoder):
    _, clip, _ = clip_bundle
    bundle = Bundle(bundle_path)
    live = LiveIndex(bundle, keyword_encoder, LiveConfig(commit_interval_s=0.05), clip)
    live.start()
    served = create_server(single(Served(Searcher(bundle, keyword_encoder, clip_encoder=clip)), live), "127.0.0.1:0")
    yield f"127.0.0.1:{served.port}", bundle, clip
    served.server.stop(0)
    live.close()
    bundle.close()


def test_grpc_upsert_with_photo_bytes_then_photo_query_and_bad_photos_name_the_item_and_field(served, keyword_encoder):
    target, bundle, clip = served
    photo = draw("Green", "Square", 8)
    with CatalogClient(target) as catalog:
        item = search_pb2.Item(id="g1", title="Green Square tote", image=png(photo))
        assert [a.id for a in catalog.upsert([search_pb2.UpsertRequest(item=item)])] == ["g1"]
        assert photo_hits(bundle, clip, keyword_encoder, photo)[0] == "g1"
        bad = [(search_pb2.Item(id="b1", title="x", image=b"\x89PNG not really"), "item.image"),
               (search_pb2.Item(id="b2", title="x", image_uri="/nonexistent/photo.jpg"), "item.image_uri"),
               (search_pb2.Item(id="b3", title="x", image=png(photo), image_uri="/a.jpg"), "item.image")]
        for msg, field in bad:
            with pytest.raises(grpc.RpcError) as err:
                list(catalog.upsert([search_pb2.UpsertRequest(item=msg)]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(field + ":") and "(request 0)" in err.value.details()
            assert catalog.get([msg.id]) == []  # nothing acked, nothing written
        assert [a.id for a in catalog.upsert([search_pb2.UpsertRequest(item=search_pb2.Item(id="ok", title="Red"))])] == ["ok"]


def _serve(bundle: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vitrine.cli.main", "serve", "--bundle", bundle, "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_listening(proc: subprocess.Popen, timeout_s: float = 120) -> str:
    end = time.time() + timeout_s
    while time.time() < end:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return line.split()[-1]
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
    raise AssertionError("server did not start")


def test_a_second_writable_server_on_one_bundle_refuses_to_start_and_read_only_ones_share_it(tmp_path):
    bundle = str(tmp_path / "b")
    build_bundle(make_items(), bundle, None, IndexerConfig(onnx=False, progress=False))  # BM25 only: a fast start
    first = _serve(bundle)
    try:
        target = _wait_listening(first)
        with CatalogClient(target) as catalog:
            assert [a.id for a in catalog.upsert_items([Item(id="via-A", title="acked by A")])] == ["via-A"]
        second = subprocess.run([sys.executable, "-m", "vitrine.cli.main", "serve", "--bundle", bundle, "--port", "0"],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "listening" not in second.stdout
        errors = [line for line in second.stderr.splitlines() if not line.startswith("{")]  # JSON lines are logs
        assert len(errors) == 1 and bundle in errors[0] and f"pid {first.pid}" in errors[0], second.stderr
        assert "Traceback" not in second.stderr
        reader = _serve(bundle, "--read-only")
        try:
            with CatalogClient(_wait_listening(reader)) as catalog:
                assert catalog.get(["1"])  # the read-only server serves the same bundle
        finally:
            reader.terminate()
            reader.wait(30)
        (tmp_path / "c.jsonl").write_text(json.dumps({"id": "z", "title": "z"}) + "\n")
        index = subprocess.run([sys.executable, "-m", "vitrine.cli.main", "index", "--catalog", str(tmp_path / "c.jsonl"),
                                "--out", bundle, "--force", "--no-text-vectors"], capture_output=True, text=True,
                               timeout=120)
        assert index.returncode == 2 and f"pid {first.pid}" in index.stderr and "Traceback" not in index.stderr
    finally:
        first.terminate()
        first.wait(30)
    # Every write A acknowledged is in the bundle after it stops.
    reopened = Bundle(bundle)
    try:
        assert reopened.docstore.get("via-A") is not None
    finally:
        reopened.close()


def test_the_lock_is_exclusive_within_one_process_and_released_on_close(bundle_path, clip_bundle, keyword_encoder):
    _, clip, _ = clip_bundle
    bundle = Bundle(bundle_path)
    live = LiveIndex(bundle, keyword_encoder, LiveConfig(), clip)
    other = Bundle(bundle_path)
    with pytest.raises(BundleLocked, match=f"pid {os.getpid()}"):
        LiveIndex(other, keyword_encoder, LiveConfig(), clip)
    live.close()
    again = LiveIndex(other, keyword_encoder, LiveConfig(), clip)
    again.close()
    other.close()
    bundle.close()


def test_cli_upsert_sends_local_photos_as_bytes_and_refuses_a_missing_one(served, keyword_encoder, tmp_path, capsys):
    from vitrine.cli.main import main

    target, bundle, clip = served
    (tmp_path / "pics").mkdir()
    photo = draw("Red", "Stripe", 6)
    photo.save(tmp_path / "pics" / "r.png")
    catalog = tmp_path / "new.jsonl"
    catalog.write_text(json.dumps({"id": "cli-1", "title": "Red Stripe scarf", "image": "pics/r.png"}) + "\n")
    assert main(["upsert", "--target", target, "--catalog", str(catalog)]) == 0
    assert capsys.readouterr().out.split() == ["ack", "cli-1"]
    assert bundle.docstore.get("cli-1").image.startswith(BUNDLE_PHOTO)  # sent as bytes, kept by the server
    assert photo_hits(bundle, clip, keyword_encoder, photo)[0] == "cli-1"
    catalog.write_text(json.dumps({"id": "cli-2", "title": "x", "image": "pics/typo.png"}) + "\n")
    assert main(["upsert", "--target", target, "--catalog", str(catalog)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cli-2" in err[0] and "typo.png" in err[0]
    assert bundle.docstore.get("cli-2") is None


def test_a_bundle_without_clip_keeps_a_sent_photo_for_display_and_refuses_a_bad_one(small_bundle_path, tmp_path,
                                                                                    keyword_encoder):
    path = tmp_path / "text-only"
    shutil.copytree(small_bundle_path, path)
    bundle = Bundle(path)
    live = LiveIndex(bundle, keyword_encoder)
    try:
        assert live.upsert([Item(id="p", title="Red Square print")], photos={"p": png(draw("Red", "Square", 0))}) == 1
        image = live.get(["p"])[0].image
        assert image.startswith(BUNDLE_PHOTO) and (path / image[len(BUNDLE_PHOTO):]).is_file()
        with pytest.raises(ValueError, match="item 'q': image:"):
            live.upsert([Item(id="q", title="x")], photos={"q": b"GIF89a not really"})
        assert live.get(["q"]) == []
    finally:
        live.close()
        bundle.close()


def test_export_gives_a_catalog_whose_reindex_finds_live_photos(bundle_path, clip_bundle, keyword_encoder, tmp_path):
    from vitrine.cli.main import main
    from vitrine.indexer.catalog import read_catalog

    _, clip, _ = clip_bundle
    photo = draw("Green", "Stripe", 9)
    bundle = Bundle(bundle_path)
    live = LiveIndex(bundle, keyword_encoder, LiveConfig(), clip)
    try:
        live.upsert([Item(id="exp", title="Green Stripe bag")], photos={"exp": png(photo)})
        assert main(["export", "--bundle", str(bundle_path), "--out", str(tmp_path / "cat.jsonl")]) == 0  # while open
    finally:
        live.close()
        bundle.close()
    items, errors = read_catalog(tmp_path / "cat.jsonl")
    assert errors == []
    assert len(items) == 25 and all(Path(it.image).is_file() for it in items if it.image)
    build_bundle(items, tmp_path / "re", keyword_encoder,
                 IndexerConfig(ann=AnnConfig(factory="Flat"), onnx=False, progress=False), clip_encoder=clip,
                 source=CatalogSource(dir=tmp_path))
    again = Bundle(tmp_path / "re")
    try:
        assert photo_hits(again, clip, keyword_encoder, photo)[0] == "exp"
    finally:
        again.close()


def test_replay_of_a_patch_whose_item_a_later_record_deleted_needs_no_model_and_no_photo(
        bundle_path, clip_bundle, keyword_encoder, tmp_path):
    _, clip, root = clip_bundle
    bundle = Bundle(bundle_path)
    live = LiveIndex(bundle, keyword_encoder, LiveConfig(), clip)
    live.patch("5", price=9.0)
    live.delete(["5"])
    bundle.bm25._writer = None
    live.wal.close()
    live._writer_lock.release()  # a crash: the WAL holds a patch of an item the next record deletes
    shutil.move(str(root / "images"), str(tmp_path / "moved-away"))  # and the shop's photos are gone
    try:
        again = LiveIndex(Bundle(bundle_path), keyword_encoder, LiveConfig(), NoModel())
        assert again.get(["5"]) == [] and again.wal.records == 0
        again.close()
    finally:
        shutil.move(str(tmp_path / "moved-away"), str(root / "images"))


def test_a_failed_wal_append_is_cut_off_and_later_appends_replay(tmp_path, monkeypatch):
    from vitrine.indexer.live import Wal

    wal = Wal(tmp_path / "wal.log")
    wal.append({"seq": 1, "op": "delete", "ids": ["a"]})
    size = (tmp_path / "wal.log").stat().st_size
    real_fsync, calls = os.fsync, []

    def fsync_fails_once(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fails_once)
    with pytest.raises(OSError, match="No space"):
        wal.append({"seq": 2, "op": "delete", "ids": ["b"]})
    assert (tmp_path / "wal.log").stat().st_size == size and wal.records == 1  # the failed record is gone
    # If the repair fails too, the log refuses every later write instead of leaving a torn record in the middle.
    calls.clear()
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        wal.append({"seq": 9, "op": "delete", "ids": ["x"]})
    assert wal.broken
    wal.broken = False  # as a restart would be
    monkeypatch.setattr(os, "fsync", real_fsync)
    os.ftruncate(wal._f.fileno(), size)
    wal.append({"seq": 3, "op": "delete", "ids": ["c"]})
    wal.close()
    assert [r["seq"] for r in Wal(tmp_path / "wal.log").replay()] == [1, 3]


def test_index_force_refuses_a_bundle_whose_wal_holds_writes_and_photo_reads_refuse_devices(small_bundle_path,
                                                                                             tmp_path):
    from vitrine.indexer.images import read_image_bytes

    path = tmp_path / "b"
    shutil.copytree(small_bundle_path, path)
    (path / "wal.log").write_bytes(b"VW\x01\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(FileExistsError, match="acknowledged writes in its WAL"):
        build_bundle(make_items(), path, None, IndexerConfig(onnx=False, progress=False), force=True)
    with pytest.raises(ValueError, match="not a regular file"):
        read_image_bytes("/dev/zero")
