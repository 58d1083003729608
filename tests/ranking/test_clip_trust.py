"""CLIP text joins text queries only when the bundle's own check of the CLIP passes; stop words do not make a literal
query look like a paraphrase. A fake CLIP with one dimension per colour makes every figure exact."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitrine.encoders.base import l2_normalize
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bm25 import STOP_WORDS, content_words
from vitrine.indexer.bundle import Bundle, CatalogSource, IndexerConfig, build_bundle
from vitrine.indexer.catalog import Item
from vitrine.indexer.clip_check import MIN_HELDOUT
from vitrine.indexer.manifest import Manifest
from vitrine.ranking.pipeline import SearchConfig, Searcher, SearchRequest, clip_text_trust

RGB = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40), "black": (20, 20, 20)}
COLOURS = list(RGB)
SYNONYMS = {"crimson": "red", "azure": "blue"}
ARTICLES = ["Shirt", "Dress", "Bag"]
PER_CLASS = 5   # 4 colours x 3 articles x 5 = 60 photos: chance recall@10 is 1/6, far from what either CLIP gets


class ColourClip:
    """A CLIP whose space has one dimension per colour: a photo by its pixels, a text by its colour words.

    `shift` rotates the text side only ("red" is read as the next colour): a text tower that learnt nothing useful
    beside a good image tower, like the demo's 3-epoch CLIP."""

    dim = len(COLOURS)

    def __init__(self, name: str, shift: int = 0) -> None:
        self.name, self.shift = name, shift

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(0))  # (3,)

    def encode_pixels(self, x: torch.Tensor) -> np.ndarray:
        centres = torch.tensor([RGB[c] for c in COLOURS], dtype=torch.float32)  # (C, 3)
        nearest = torch.cdist(x.float(), centres).argmin(1)  # (B,)
        return np.eye(self.dim, dtype=np.float32)[nearest.numpy()]  # (B, C)

    def encode_images(self, images: list, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.encode_pixels(torch.stack([self.preprocess(im) for im in images]))

    def encode_texts(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.full((len(texts), self.dim), 1e-3, dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace(",", " ").replace(".", " ").split():
                word = SYNONYMS.get(word, word)
                if word in COLOURS:
                    out[row, (COLOURS.index(word) + self.shift) % self.dim] += 1.0
        return l2_normalize(out)


def png(colour: str) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), RGB[colour]).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("colourshop")
    (root / "images").mkdir()
    items = []
    for colour in COLOURS:
        for article in ARTICLES:
            for n in range(PER_CLASS):
                item_id = f"{colour}-{article.lower()}-{n}"
                (root / "images" / f"{item_id}.png").write_bytes(png(colour))
                items.append(Item(id=item_id, title=f"{colour.title()} {article}", image=f"images/{item_id}.png",
                                  attributes={"color": colour.title(), "article_type": article}))
    items.append(Item(id="text-only", title="Red Scarf", attributes={"color": "Red"}))  # no photo: not a check query
    return root, items


def build(shop, tmp_path_factory, clip: ColourClip, keyword_encoder) -> str:
    root, items = shop
    out = tmp_path_factory.mktemp("clipbundle") / "b"
    build_bundle(items, out, keyword_encoder, IndexerConfig(ann=AnnConfig(factory="Flat"), progress=False),
                 clip_encoder=clip, source=CatalogSource(dir=root))
    return str(out)


@pytest.fixture(scope="module")
def strong_path(shop, tmp_path_factory, keyword_encoder):
    return build(shop, tmp_path_factory, ColourClip("strong"), keyword_encoder)


@pytest.fixture(scope="module")
def weak_path(shop, tmp_path_factory, keyword_encoder):
    return build(shop, tmp_path_factory, ColourClip("weak", shift=1), keyword_encoder)


def open_searcher(path: str, keyword_encoder, config: SearchConfig = SearchConfig(), shift: int = 0):
    bundle = Bundle(path)
    return Searcher(bundle, keyword_encoder, config, clip_encoder=ColourClip("x", shift))


def test_stop_words_count_neither_covered_nor_unknown(small_bundle):
    """"the" is not a catalog word, "for" is (in "Red Shirt for Men"): neither may move a query's coverage."""
    assert {"for", "the", "with", "and"} <= STOP_WORDS
    assert content_words("Navy blue shirt for the men") == ["navy", "blue", "shirt", "men"]
    bm = small_bundle.bm25
    assert bm.term_coverage("red dress") == 1.0
    assert bm.term_coverage("the red dress") == 1.0          # was 2/3: "the" counted as an unknown word
    assert bm.term_coverage("red shirt for the men") == 1.0
    assert bm.term_coverage("the crimson dress with a bow") == pytest.approx(1 / 3)  # crimson, bow unknown
    assert bm.term_coverage("for the") == 0.0                # nothing left to judge: as an empty query


def test_a_query_with_stop_words_stays_literal(strong_path, keyword_encoder):
    """Literal queries keep CLIP text at literal_clip_scale (0 by default) whatever stop words they carry."""
    searcher = open_searcher(strong_path, keyword_encoder)
    scores = lambda r: [(h.id, round(h.score, 6)) for h in r.hits]  # noqa: E731
    for text in ("red shirt", "the red shirt", "a red dress with the bag"):
        got = searcher.search(SearchRequest(text=text, k=10))
        without_clip = searcher.search(SearchRequest(text=text, k=10, weights={"clip_text": 0.0}))
        assert scores(got) == scores(without_clip), text
    # A paraphrase ("crimson" is no catalog word) lets CLIP text count: the fused scores differ.
    para = searcher.search(SearchRequest(text="the crimson shirt", k=10))
    assert scores(para) != scores(searcher.search(SearchRequest(text="the crimson shirt", k=10, weights={"clip_text": 0.0})))


def test_indexer_writes_the_check_into_the_manifest(strong_path, weak_path):
    strong = json.loads((Path(strong_path) / "manifest.json").read_text())["models"]["clip"]["check"]
    weak = json.loads((Path(weak_path) / "manifest.json").read_text())["models"]["clip"]["check"]
    photos = len(COLOURS) * len(ARTICLES) * PER_CLASS
    # Every photo item is a query (the text-only item is not), ranked among all 60 photos.
    assert strong["queries"] == weak["queries"] == photos and strong["pool"] == photos
    assert strong["chance"] == pytest.approx(10 / photos, abs=1e-4) and strong["heldout"] is False
    assert strong["text_to_image_recall@10"] == 1.0   # its 15 same-colour photos tie with it: all "found"
    assert weak["text_to_image_recall@10"] == 0.0     # 15 photos of the colour it reads are strictly closer
    assert "catalog items" in strong["how"]


def test_the_check_queries_only_what_the_trainer_held_out(shop, tmp_path):
    """With `vitrine train clip`'s training.json beside the model, only its held-out items are queried."""
    root, items = shop
    model = tmp_path / "model"
    model.mkdir()
    held = [it.id for it in items if it.image][:MIN_HELDOUT + 4] + ["not-in-this-catalog"]
    (model / "training.json").write_text(json.dumps({"heldout_ids": held}))
    manifest = build_bundle(items, tmp_path / "b", None, IndexerConfig(ann=AnnConfig(factory="Flat"), progress=False),
                            clip_encoder=ColourClip(str(model)), source=CatalogSource(dir=root))
    check = manifest.models["clip"].check
    assert check["heldout"] is True and check["queries"] == MIN_HELDOUT + 4 and check["pool"] == 60
    assert "held out" in check["how"]
    # Too few held-out items in this catalog: the whole catalog is sampled, and the check says so.
    (model / "training.json").write_text(json.dumps({"heldout_ids": held[:3]}))
    manifest = build_bundle(items, tmp_path / "b", None, IndexerConfig(ann=AnnConfig(factory="Flat"), progress=False),
                            clip_encoder=ColourClip(str(model)), source=CatalogSource(dir=root), force=True)
    assert manifest.models["clip"].check["heldout"] is False
    assert manifest.models["clip"].check["queries"] == 60


def test_a_weak_clip_never_joins_a_text_query_but_serves_photos(weak_path, keyword_encoder):
    searcher = open_searcher(weak_path, keyword_encoder, shift=1)
    # "azure purse": no catalog word, so the coverage rule alone would give CLIP text its full weight.
    result = searcher.search(SearchRequest(text="azure purse", k=5))
    assert all("clip_text" not in h.scores_by_source for h in result.hits)
    assert "clip_text_encode" not in result.timings_ms and "clip_text_ann" not in result.timings_ms
    assert f"is below [search] clip_text_min_recall = {SearchConfig().clip_text_min_recall:g}" in result.dropped["clip_text"]
    assert all(h.id.startswith("blue-bag") for h in result.hits)   # MiniLM's stand-in knows azure = blue, purse = bag
    # The same CLIP still answers photo queries, and composed ones use its text tower as before.
    photo = searcher.search(SearchRequest(image=png("green"), k=10))
    assert photo.dropped == {} and all(h.id.startswith("green-") for h in photo.hits)
    assert all("clip_image" in h.scores_by_source for h in photo.hits)
    composed = searcher.search(SearchRequest(image=png("green"), text="in red", k=5))
    assert "clip_text_encode" in composed.timings_ms and composed.dropped == {}
    # A request that names clip_text gets it: the check decides defaults, not what a caller asks for.
    asked = searcher.search(SearchRequest(text="azure purse", k=5, sources=["clip_text"]))
    assert asked.hits and all("clip_text" in h.scores_by_source for h in asked.hits) and asked.dropped == {}
    weighted = searcher.search(SearchRequest(text="azure purse", k=5, weights={"clip_text": 0.5}))
    assert any("clip_text" in h.scores_by_source for h in weighted.hits) and weighted.dropped == {}
    # With the threshold at 0 every CLIP is trusted.
    lax = open_searcher(weak_path, keyword_encoder, SearchConfig(clip_text_min_recall=0.0), shift=1)
    assert any("clip_text" in h.scores_by_source for h in lax.search(SearchRequest(text="azure purse", k=5)).hits)


def test_a_strong_clip_joins_a_paraphrase(strong_path, keyword_encoder):
    searcher = open_searcher(strong_path, keyword_encoder)
    result = searcher.search(SearchRequest(text="azure purse", k=5))
    assert result.dropped == {} and all("clip_text" in h.scores_by_source for h in result.hits)
    trusted, why = clip_text_trust(searcher.bundle.manifest, SearchConfig().clip_text_min_recall)
    assert trusted and "passes" in why


def with_check(manifest: Manifest, check: dict | None) -> Manifest:
    """The manifest with its CLIP's check replaced (None: a bundle indexed before the check existed)."""
    return replace(manifest, models={**manifest.models, "clip": replace(manifest.models["clip"], check=check)})


def test_bundles_without_a_check_keep_the_old_behaviour(weak_path, keyword_encoder):
    """An older bundle (no check) lets CLIP text join as before; a check that could not be measured does not pass."""
    searcher = open_searcher(weak_path, keyword_encoder, shift=1)
    manifest = searcher.bundle.manifest
    searcher.bundle.manifest = with_check(manifest, None)
    result = searcher.search(SearchRequest(text="azure purse", k=5))
    assert result.dropped == {} and any("clip_text" in h.scores_by_source for h in result.hits)
    searcher.bundle.manifest = with_check(manifest, {"text_to_image_recall@10": None, "queries": 0,
                                                     "how": "not measured: no item has both a photo and text"})
    result = searcher.search(SearchRequest(text="azure purse", k=5))
    assert "not measured" in result.dropped["clip_text"]


def test_clip_text_trust_is_chance_corrected():
    check = lambda r, c: Manifest.from_dict({"format_version": 1, "models": {"clip": {"name": "c", "dim": 2, "kind": "open_clip", "check": {  # noqa: E731
        "text_to_image_recall@10": r, "chance": c, "queries": 50}}}})
    assert clip_text_trust(check(0.25, 0.01), 0.2)[0]
    assert not clip_text_trust(check(0.18, 0.01), 0.2)[0]
    # In a 20-photo catalog half the photos are in any top 10: recall 0.55 is barely above chance.
    assert not clip_text_trust(check(0.55, 0.5), 0.2)[0]
    assert clip_text_trust(check(0.7, 0.5), 0.2)[0]
    assert not clip_text_trust(Manifest.from_dict({"format_version": 1, "models": {}}), 0.2)[0]
    with pytest.raises(ValueError, match="search.clip_text_min_recall"):
        SearchConfig.from_dict({"clip_text_min_recall": 1.5})


def test_the_explanation_over_grpc_says_why_clip_text_was_left_out(weak_path, keyword_encoder):
    from vitrine.server.app import create_server, single
    from vitrine.serving.assemble import Served
    from vitrine.server.client import VitrineClient

    served = create_server(single(Served(open_searcher(weak_path, keyword_encoder, shift=1))), "127.0.0.1:0")
    try:
        with VitrineClient(f"127.0.0.1:{served.port}") as client:
            hits = client.search("azure purse", k=3, explain=True).hits
            assert hits and all("clip_text left out: its CLIP check is below" in h.explanation for h in hits)
            photo = client.search(image=png("green"), k=3, explain=True).hits
            assert photo and all("left out" not in h.explanation for h in photo)
    finally:
        served.server.stop(0)
