"""Several photos per item: the catalog's `images`, photo vector ids, the search that returns each item once at its best
photo's score (checked against brute force), and batch indexing of every photo with a pixel "CLIP" that makes each
photo's vector exact."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitrine.encoders.base import l2_normalize
from vitrine.indexer.ann import AnnConfig, VectorIndex
from vitrine.indexer.bundle import Bundle, CatalogSource, IndexerConfig, build_bundle
from vitrine.indexer.catalog import Item, item_from_dict, parquet_rows, read_catalog
from vitrine.indexer.multiphoto import (collapse, docnos_of, expand_ids, photo_id, photo_key, photo_numbers,
                                        search_items, split_key)
from vitrine.indexer.reconcile import vector_ids

# ---- the catalog's `images` ----


def test_images_follow_the_main_photo_once_each_and_a_round_trip_reads_the_same_item():
    item = item_from_dict({"id": "a", "image": "a.jpg", "images": ["b.jpg", "a.jpg", "c.jpg", "b.jpg"]})
    assert item.image == "a.jpg" and item.extra_images == ("b.jpg", "c.jpg")
    assert item.photos == ("a.jpg", "b.jpg", "c.jpg")
    assert item.to_dict()["images"] == ["a.jpg", "b.jpg", "c.jpg"] and item.to_dict()["image"] == "a.jpg"
    assert item_from_dict(item.to_dict()) == item
    only_list = item_from_dict({"id": "b", "images": ["x.jpg", "y.jpg"]})  # no `image`: the first photo is the main one
    assert only_list.image == "x.jpg" and only_list.extra_images == ("y.jpg",)
    single = item_from_dict({"id": "c", "image": "c.jpg", "images": []})
    assert single == Item(id="c", image="c.jpg") and "images" not in single.to_dict()


@pytest.mark.parametrize("images, message", [
    ("b.jpg", r"field 'images' must be a list of photo paths or URLs, got str"),
    (["b.jpg", 3], r"field 'images\[1\]' must be a non-empty string path or URL, got int"),
    (["b.jpg", "  "], r"field 'images\[1\]' must be a non-empty string path or URL, got an empty string"),
    ([f"{n}.jpg" for n in range(16)], r"field 'images' gives 17 different photos; an item has at most 16"),
])
def test_bad_images_name_the_field(images, message):
    with pytest.raises(ValueError, match=message):
        item_from_dict({"id": "a", "image": "a.jpg", "images": images})


def test_fifteen_extra_photos_are_fine_and_the_item_refuses_extras_without_a_main_photo():
    assert len(item_from_dict({"id": "a", "images": [f"{n}.jpg" for n in range(16)]}).extra_images) == 15
    with pytest.raises(ValueError, match="extra_images without a main image"):
        Item(id="a", extra_images=("b.jpg",))
    assert Item(id="a", image="a.jpg", extra_images=["b.jpg"]).extra_images == ("b.jpg",)  # a list becomes a tuple


def test_jsonl_csv_and_parquet_read_images_and_a_bad_line_names_the_field(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "image": "a.jpg", "images": ["b.jpg"]}) + "\n"
                     + json.dumps({"id": "z", "images": {"x": 1}}) + "\n")
    items, errors = read_catalog(jsonl, skip_invalid=True)
    assert items[0].photos == ("a.jpg", "b.jpg")
    assert len(errors) == 1 and errors[0].line == 2 and "field 'images'" in errors[0].message
    csv = tmp_path / "c.csv"
    csv.write_text('id,image,images\na,a.jpg,b.jpg|c.jpg\nb,,"[""x.jpg"", ""y.jpg""]"\n')
    items, _ = read_catalog(csv)
    assert [it.photos for it in items] == [("a.jpg", "b.jpg", "c.jpg"), ("x.jpg", "y.jpg")]
    assert items[0].attributes == {}  # "images" is a catalog field, not an attribute
    rows = list(parquet_rows([{"id": "p", "image": "p.jpg", "images": ["q.jpg"]}, {"id": "r", "images": None}]))
    assert rows[0][1].photos == ("p.jpg", "q.jpg") and rows[1][1].photos == ()


# ---- photo vector ids and the search that collapses them ----


def test_photo_ids_keep_the_doc_number_and_number_the_photo():
    ids = np.array([photo_id(7, 0), photo_id(7, 3), photo_id(123456, 15), -1])
    assert ids[0] == 7 and ids[1] == (3 << 40) | 7
    assert docnos_of(ids).tolist() == [7, 7, 123456, -1]
    assert photo_numbers(ids[:3]).tolist() == [0, 3, 15]
    assert sorted(expand_ids(np.array([1, 2]), 1).tolist()) == [1, 2, (1 << 40) | 1, (1 << 40) | 2]
    assert split_key(photo_key("clip_image", 2)) == ("clip_image", 2) and photo_key("clip_image", 0) == "clip_image"
    with pytest.raises(ValueError, match="photo number 16"):
        photo_id(1, 16)


def _multi_photo_index(seed: int = 0, items: int = 60, dim: int = 16) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.array([photo_id(d, j) for d in range(items) for j in range(int(rng.integers(1, 5)))], dtype=np.int64)
    xb = l2_normalize(rng.standard_normal((len(ids), dim)).astype(np.float32))
    return VectorIndex.build(xb, ids, AnnConfig(factory="Flat")), ids, xb


def _brute_force(xq: np.ndarray, ids: np.ndarray, xb: np.ndarray, depth: int, allowed: set[int] | None
                 ) -> list[tuple[int, float]]:
    best: dict[int, float] = {}
    for vid, score in zip(ids.tolist(), (xb @ xq[0]).tolist()):
        d = vid & ((1 << 40) - 1)
        if allowed is None or d in allowed:
            best[d] = max(best.get(d, -np.inf), score)
    return sorted(best.items(), key=lambda x: -x[1])[:depth]


@pytest.mark.parametrize("filtered", [False, True])
def test_search_items_scores_each_item_by_its_best_photo_once_as_brute_force_does(filtered):
    index, ids, xb = _multi_photo_index()
    rng = np.random.default_rng(1)
    allowed = np.sort(rng.choice(60, 20, replace=False)) if filtered else None
    for _ in range(10):
        xq = l2_normalize(rng.standard_normal((1, xb.shape[1])).astype(np.float32))
        D, I = search_items(index, xq, 8, allowed, max_extra=3)
        expected = _brute_force(xq, ids, xb, 8, None if allowed is None else set(allowed.tolist()))
        assert I.shape == (1, 8) and I[0].tolist() == [d for d, _ in expected]
        np.testing.assert_allclose(D[0], [s for _, s in expected], atol=1e-5)


def test_search_items_without_extra_photos_is_exactly_the_index_search():
    rng = np.random.default_rng(2)
    xb = l2_normalize(rng.standard_normal((40, 8)).astype(np.float32))
    index = VectorIndex.build(xb, np.arange(40, dtype=np.int64), AnnConfig(factory="Flat"))
    xq = l2_normalize(rng.standard_normal((1, 8)).astype(np.float32))
    for allowed in (None, np.array([3, 5, 7, 11])):
        for got, want in zip(search_items(index, xq, 6, allowed, 0), index.search(xq, 6, allowed)):
            np.testing.assert_array_equal(got, want)


def test_collapse_pads_a_row_with_fewer_items():
    D = np.array([[0.9, 0.8, 0.7, -np.inf]], np.float32)
    I = np.array([[photo_id(4, 1), 4, photo_id(2, 2), -1]])
    D_out, I_out = collapse(D, I, 3)
    assert I_out.tolist() == [[4, 2, -1]] and D_out[0, :2].tolist() == pytest.approx([0.9, 0.7])


# ---- batch indexing of every photo ----


class PixelClip:
    """A CLIP stand-in whose image vector is the photo's centred 4x4 pixels: random photos are near-orthogonal, and a
    query with an indexed photo scores 1.0 against exactly that photo's vector."""

    name = "pixel-clip-test"
    dim = 48
    image_size = None

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(img.convert("RGB").resize((4, 4)), dtype=np.float32).reshape(-1) - 127.5)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        return l2_normalize(pixels.numpy().astype(np.float32))  # (B, 48)

    def encode_images(self, images: list[Image.Image], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.encode_pixels(torch.stack([self.preprocess(i) for i in images]))

    def encode_texts(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, sum(map(ord, word)) % self.dim] += 1.0
        return l2_normalize(out + 1e-3)


def noise(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def photo_catalog(tmp_path_factory):
    """Eight one-photo items, item "m" with three photos, item "b" whose second photo is missing, a text-only item."""
    root = tmp_path_factory.mktemp("multiphoto")
    rows = []
    for n in range(8):
        noise(n).save(root / f"{n}.png")
        rows.append({"id": f"i{n}", "title": f"item {n}", "image": f"{n}.png"})
    for n in (100, 101, 102, 103):
        noise(n).save(root / f"{n}.png")
    rows += [{"id": "m", "title": "three photos", "image": "100.png", "images": ["101.png", "102.png"]},
             {"id": "b", "title": "one photo missing", "images": ["103.png", "missing.png"]},
             {"id": "t", "title": "text only"}]
    (root / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _build(root, items, out, keyword_encoder):
    build_bundle(items, out, keyword_encoder, IndexerConfig(ann=AnnConfig(factory="Flat"), onnx=False, progress=False),
                 clip_encoder=PixelClip(), source=CatalogSource(dir=root, path=str(root / "catalog.jsonl")))
    return Bundle(out)


def test_every_photo_is_indexed_and_any_one_finds_its_item_once(photo_catalog, keyword_encoder, tmp_path):
    items, _ = read_catalog(photo_catalog / "catalog.jsonl")
    bundle = _build(photo_catalog, items, tmp_path / "b", keyword_encoder)
    try:
        docno = bundle.docstore.docno_by_id
        counts = bundle.manifest.counts
        assert (counts.images, counts.broken_images, counts.items_with_images, counts.max_extra_photos) == (12, 1, 10, 2)
        assert bundle.manifest.broken_images[0].id == "b" and "missing.png" in bundle.manifest.broken_images[0].reason
        assert bundle.max_extra_photos == 2
        m, b = docno["m"], docno["b"]
        assert vector_ids(bundle.vectors["clip_image"].index) == (
            set(docno.values()) | {photo_id(m, 1), photo_id(m, 2)})  # "t" by its CLIP text, "b" by its main photo
        index, clip = bundle.vectors["clip_image"], PixelClip()
        for n in (100, 101, 102):
            D, I = search_items(index, clip.encode_images([noise(n)]), 5, None, bundle.max_extra_photos)
            assert I[0][0] == m and D[0][0] == pytest.approx(1.0, abs=1e-5)
            assert len(set(I[0].tolist())) == 5  # no item twice
            D, I = search_items(index, clip.encode_images([noise(n)]), 5, np.array([b, docno["i3"]]), 2)
            assert set(I[0][:2].tolist()) == {b, docno["i3"]}  # the filter holds, by doc number
        D, I = search_items(index, clip.encode_images([noise(103)]), 1, None, 2)
        assert I[0].tolist() == [b]  # the item keeps the photo that could be read
    finally:
        bundle.close()


def test_a_catalog_of_one_photo_per_item_has_doc_numbers_as_ids_and_searches_as_before(photo_catalog, keyword_encoder,
                                                                                        tmp_path):
    items = [it for it in read_catalog(photo_catalog / "catalog.jsonl")[0] if not it.extra_images]
    bundle = _build(photo_catalog, items, tmp_path / "single", keyword_encoder)
    try:
        assert bundle.max_extra_photos == 0 and bundle.manifest.counts.max_extra_photos == 0
        assert vector_ids(bundle.vectors["clip_image"].index) == set(bundle.docstore.docno_by_id.values())
        index = bundle.vectors["clip_image"]
        xq = PixelClip().encode_images([noise(3)])
        for got, want in zip(search_items(index, xq, 5, None, bundle.max_extra_photos), index.search(xq, 5)):
            np.testing.assert_array_equal(got, want)
    finally:
        bundle.close()
