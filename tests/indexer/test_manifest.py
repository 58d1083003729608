"""The typed manifest reads every manifest this format has written and writes back exactly what it read."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitrine.indexer.bundle import Bundle
from vitrine.indexer.manifest import FORMAT_VERSION, MANIFEST, Manifest

# What the first bundle writer put in manifest.json: no broken images, no builder, no model version, two counts.
FIRST = {
    "format_version": 1, "bundle_version": "20261122T000000Z-abc123", "created": "2026-11-22T00:00:00Z",
    "catalog": "/shop/catalog.jsonl", "counts": {"items": 3, "text_vectors": 3}, "next_docno": 3,
    "models": {"text": {"name": "all-MiniLM-L6-v2", "dim": 384, "kind": "sentence-transformers"}},
    "vectors": {"text": {"file": "vectors/text.faiss", "factory": "Flat", "dim": 384, "count": 3, "model": "text",
                         "metric": "inner_product"}},
    "bm25": {"dir": "bm25", "tokenizer": "en_stem", "boosts": {"title": 2.0}}, "config": {}, "timings": {"bm25_s": 0.1},
}


def test_a_built_manifest_reads_back_as_the_json_written(small_bundle_path):
    written = json.loads((Path(small_bundle_path) / MANIFEST).read_text())
    manifest = Manifest.read(small_bundle_path)
    assert manifest.to_dict() == written
    assert manifest.format_version == FORMAT_VERSION and manifest.counts.items == 8
    assert manifest.models["text"].dim == manifest.vectors["text"].dim and manifest.vectors["text"].count == 8
    bundle = Bundle(small_bundle_path)
    try:
        assert bundle.manifest == manifest and bundle.version == written["bundle_version"]
    finally:
        bundle.close()


def test_an_older_manifest_reads_and_writes_back_unchanged(tmp_path):
    """Keys added after the first writer stay absent (not filled with defaults), and keys this version does not
    know are kept, at the top and inside records, so a live checkpoint's rewrite loses nothing."""
    old = {**FIRST, "shop_note": "kept"}
    old["models"] = {"text": {**FIRST["models"]["text"], "trained_on": "kept too"}}
    (tmp_path / MANIFEST).write_text(json.dumps(old))
    manifest = Manifest.read(tmp_path)
    assert manifest.broken_images is None and manifest.built_by is None and manifest.models["text"].version is None
    assert manifest.to_dict() == old
    manifest.write(tmp_path / "copy.json")
    assert json.loads((tmp_path / "copy.json").read_text()) == old


def test_a_manifest_without_a_format_version_or_a_required_key_is_refused_by_name(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({k: v for k, v in FIRST.items() if k != "format_version"}))
    with pytest.raises(ValueError, match=f"bundle {tmp_path} has format version None"):
        Manifest.read(tmp_path)
    damaged = {**FIRST, "vectors": {"text": {"file": "vectors/text.faiss"}}}   # no factory, dim, count, model
    (tmp_path / MANIFEST).write_text(json.dumps(damaged))
    with pytest.raises(ValueError, match=f"bundle {tmp_path}: manifest.json is damaged .*re-index"):
        Manifest.read(tmp_path)


def test_to_dict_orders_keys_as_the_file_does(small_bundle_path):
    """Info serves to_dict(): its text keeps the sorted key order manifest.json is written in, nested records too."""
    text = (Path(small_bundle_path) / MANIFEST).read_text()
    assert json.dumps(Manifest.read(small_bundle_path).to_dict(), indent=2) == json.dumps(json.loads(text), indent=2)


def test_another_format_version_is_refused(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({**FIRST, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match=f"bundle {tmp_path} has format version {FORMAT_VERSION + 1}"):
        Manifest.read(tmp_path)


def test_live_counts_rewrite_counts_vectors_and_next_docno():
    manifest = Manifest.from_dict({**FIRST, "vectors": {**FIRST["vectors"], "clip_image": {
        "file": "vectors/clip_image.faiss", "factory": "Flat", "dim": 32, "count": 2, "model": "clip",
        "metric": "inner_product", "images": 2, "text_only": 0}}})
    after = manifest.with_live_counts(5, {"text": 4, "clip_image": 5}, 7).to_dict()
    assert after["counts"] == {"items": 5, "text_vectors": 4, "clip_image_vectors": 5}
    assert after["vectors"]["clip_image"]["count"] == 5 and after["vectors"]["text"]["count"] == 4
    assert after["next_docno"] == 7 and manifest.counts.items == 3  # the original is untouched
