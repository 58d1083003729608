"""`vitrine index --ray` on a local 2-worker Ray cluster: the same bundle as the single-process indexer (exact
vectors, same answers), a worker killed mid-job loses and duplicates nothing, and bad lines are reported alike."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.trainer.conftest import base_clip, toy_shop  # noqa: F401 - fixtures: a toy catalog with photos, a tiny CLIP
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bundle import Bundle, CatalogSource, IndexerConfig, build_bundle
from vitrine.indexer.catalog import read_catalog

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)   # CPU actors even on a GPU host
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def encoders(tiny_st, base_clip):  # noqa: F811
    from vitrine.encoders.clip import ClipEncoder
    from vitrine.encoders.text import SentenceTransformerEncoder

    return SentenceTransformerEncoder(tiny_st, device="cpu"), ClipEncoder(str(base_clip), device="cpu")


def shop_items(toy_shop) -> list:  # noqa: F811
    """The toy catalog plus a text-only item (its CLIP vector comes from CLIP's text tower) and a missing photo."""
    from vitrine.indexer.catalog import Item

    items, _ = read_catalog(toy_shop["catalog"])
    return [*items, Item(id="text-only", title="red box without a photo"), Item(id="lost", title="blue ball", image="gone.jpg")]


def build(toy_shop, encoders, out, runner=None):  # noqa: F811
    items = shop_items(toy_shop)
    text, clip = encoders
    # Small batches: many tasks, so the work really spreads over both workers.
    return build_bundle(items, out, text,
                        IndexerConfig(batch_size=8, ann=AnnConfig(factory="Flat"), onnx=False, progress=False),
                        clip_encoder=clip, source=CatalogSource(dir=toy_shop["root"]), runner=runner)


def toy_ids(toy_shop) -> list[str]:  # noqa: F811
    return [it.id for it in shop_items(toy_shop)]


@pytest.fixture(scope="module")
def local_bundle(toy_shop, encoders, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("local") / "bundle"
    build(toy_shop, encoders, out)
    return out


def same_bundle(a, b, queries, item_ids) -> None:
    """Every stored vector equal, every item stored alike, and the same ids in the same order for each query."""
    from vitrine.ranking.pipeline import Searcher, SearchRequest

    ba, bb = Bundle(a), Bundle(b)
    try:
        assert set(ba.vectors) == set(bb.vectors) == {"text", "clip_image"}
        for source in ba.vectors:
            va, vb = ba.vectors[source], bb.vectors[source]
            # Every item has a vector in both: text-only and photo-less items get CLIP's text vector.
            ids = np.arange(ba.manifest.next_docno, dtype=np.int64)
            assert va.ntotal == vb.ntotal == len(ids)
            np.testing.assert_array_equal(va.reconstruct(ids), vb.reconstruct(ids))
        assert [ba.docstore.get(i) for i in item_ids] == [bb.docstore.get(i) for i in item_ids]
        enc = Searcher(ba, None), Searcher(bb, None)
        for n, q in enumerate(queries):
            ha = enc[0].search(SearchRequest(text=q, k=10, sources=["bm25"])).hits
            hb = enc[1].search(SearchRequest(text=q, k=10, sources=["bm25"])).hits
            assert [h.id for h in ha] == [h.id for h in hb]
            for source in ("text", "clip_image"):   # a different stored vector as the query each time
                xq = ba.vectors[source].reconstruct(np.array([3 * n + 1]))
                Da, Ia = ba.vectors[source].search(xq, 10)
                Db, Ib = bb.vectors[source].search(xq, 10)
                np.testing.assert_array_equal(Ia, Ib)
                np.testing.assert_array_equal(Da, Db)
    finally:
        ba.close()
        bb.close()


def test_ray_bundle_equals_the_single_process_one(cluster, toy_shop, encoders, local_bundle, tmp_path):  # noqa: F811
    from vitrine.indexer.distributed import RayRunner

    runner = RayRunner("auto", workers=2)
    try:
        manifest = build(toy_shop, encoders, tmp_path / "ray", runner)
    finally:
        runner.close()
    assert manifest.built_by == {"ray": "auto", "workers": 2, "devices": ["cpu"]}
    local = json.loads((local_bundle / "manifest.json").read_text())
    ray = manifest.to_dict()
    assert ray["counts"] == local["counts"] and ray["format_version"] == local["format_version"]
    assert local["counts"]["broken_images"] == 1 and ray["broken_images"] == local["broken_images"]
    same_bundle(local_bundle, tmp_path / "ray", ["red box", "blue ball", "green"], toy_ids(toy_shop))


def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(cluster, toy_shop, encoders, local_bundle, tmp_path):  # noqa: F811
    from vitrine.indexer.distributed import RayRunner

    marker = tmp_path / "killed"
    # Killed in the photo phase, where results are appended as they arrive: a duplicate or a loss would show.
    runner = RayRunner("auto", workers=2, kill_once=(str(marker), "image", 2))
    try:
        manifest = build(toy_shop, encoders, tmp_path / "ray", runner)
    finally:
        runner.close()
    assert marker.exists()   # a worker did die (SIGKILL) holding photo batch 2, and Ray retried it
    assert manifest.counts.items == json.loads((local_bundle / "manifest.json").read_text())["counts"]["items"]
    same_bundle(local_bundle, tmp_path / "ray", ["red box"], toy_ids(toy_shop))


def test_ray_reads_jsonl_and_parquet_and_reports_bad_lines_alike(cluster, tmp_path, tiny_st, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vitrine.cli.main import main
    from vitrine.indexer.distributed import read_catalog_ray

    rows = [{"id": f"i{n}", "title": f"item {n} red shirt"} for n in range(12)]
    lines = [json.dumps(r) for r in rows]
    lines[4] = '{"id": "i4", "price": "cheap"}'
    lines.insert(7, "")          # a blank line still counts for the numbers after it
    lines[9] = "{not json"
    lines[2] = json.dumps({"id": "i2", "title": "line\u2028separator \u0085 inside"}, ensure_ascii=False)  # one line
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    local = read_catalog(jsonl, skip_invalid=True)
    distributed = read_catalog_ray(jsonl, skip_invalid=True)
    assert [str(e) for e in distributed[1]] == [str(e) for e in local[1]] == [
        "line 5: field 'price' must be a finite number, got 'cheap'",
        ("line 10: invalid JSON (Expecting property name enclosed in double quotes at column 2)")]
    assert [it.id for it in distributed[0]] == [it.id for it in local[0]]
    table = pa.Table.from_pylist([{**r, "price": 5.0} for r in rows])
    pq.write_table(table, tmp_path / "c.parquet")
    items, errors = read_catalog_ray(tmp_path / "c.parquet")
    assert [it.id for it in items] == [r["id"] for r in rows] and errors == [] and items[0].price == 5.0
    rc = main(["index", "--catalog", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "b"), "--ray", "--workers", "2",
               "--text-model", tiny_st, "--quiet"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and summary["items"] == 12 and summary["workers"] == 2 and summary["devices"] == ["cpu"]
    assert summary["items_per_s"] > 0


def test_the_ray_bundle_serves_like_the_local_one_over_grpc(cluster, toy_shop, encoders, local_bundle, tmp_path):  # noqa: F811
    """The serving path end to end (gRPC server, text and photo queries) on both bundles: the same hits and scores."""
    from vitrine.indexer.distributed import RayRunner
    from vitrine.ranking.pipeline import Searcher
    from vitrine.server.app import create_server, single
    from vitrine.serving.assemble import Served
    from vitrine.server.client import VitrineClient

    runner = RayRunner("auto", workers=2)
    try:
        build(toy_shop, encoders, tmp_path / "ray", runner)
    finally:
        runner.close()
    text, clip = encoders
    photo = next(p for p in sorted((toy_shop["root"] / "images").iterdir()))
    answers = []
    for path in (local_bundle, tmp_path / "ray"):
        bundle = Bundle(path)
        served = create_server(single(Served(Searcher(bundle, text, clip_encoder=clip))), "127.0.0.1:0")
        try:
            with VitrineClient(f"127.0.0.1:{served.port}") as c:
                answers.append([[(h.id, round(h.score, 6)) for h in c.search(**q, k=5).hits]
                                for q in ({"text": "red box"}, {"image": photo.read_bytes()},
                                          {"image": photo.read_bytes(), "text": "the same but blue"})])
        finally:
            served.stop(0)
            bundle.close()
    assert answers[0] == answers[1] and all(answers[0])
