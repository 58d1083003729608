from __future__ import annotations

import pytest

from vitrine.ranking.fusion import FusionMethod
from vitrine.ranking.pipeline import InvalidRequest, SearchConfig, Searcher, SearchRequest, Unsupported


@pytest.fixture()
def searcher(small_bundle, keyword_encoder):
    return Searcher(small_bundle, keyword_encoder)


def ids(result):
    return [h.id for h in result.hits]


def test_hybrid_search_combines_sources(searcher):
    result = searcher.search(SearchRequest(text="red shirt", k=3))
    assert ids(result)[0] == "1"
    assert set(result.hits[0].scores_by_source) == {"bm25", "text"}


def test_dense_source_finds_paraphrases_bm25_misses(searcher):
    assert ids(searcher.search(SearchRequest(text="crimson tee", k=3, sources=["bm25"]))) == []
    assert ids(searcher.search(SearchRequest(text="crimson tee", k=1)))[0] == "1"


def test_filters_exclusion_and_price(searcher):
    got = ids(searcher.search(SearchRequest(text="dress", k=10, filters={"color": "Black"})))
    assert got[0] == "3" and set(got) <= {"3", "6", "8"}
    assert "4" not in ids(searcher.search(SearchRequest(text="red dress", k=10, exclude_ids=["4"])))
    got = ids(searcher.search(SearchRequest(text="shoe", k=10, price_min=60, price_max=75)))
    assert got[0] == "8" and set(got) == {"8", "3"}  # the only items priced 60..75
    got = ids(searcher.search(SearchRequest(text="shirt", k=10, filters={"category": "Apparel > Topwear"})))
    assert set(got) == {"1", "2"}


def test_pagination_is_consistent(searcher):
    full = ids(searcher.search(SearchRequest(text="black red blue", k=8)))
    pages = ids(searcher.search(SearchRequest(text="black red blue", k=3))) + \
        ids(searcher.search(SearchRequest(text="black red blue", k=3, offset=3))) + \
        ids(searcher.search(SearchRequest(text="black red blue", k=2, offset=6)))
    assert pages == full


def test_rrf_and_weights_per_request(searcher):
    only_bm25 = searcher.search(SearchRequest(text="black shoe", k=3, weights={"text": 0.0}))
    assert ids(only_bm25)[0] in {"5", "8"}
    rrf = searcher.search(SearchRequest(text="black shoe", k=3, fusion=FusionMethod.RRF, weights={"bm25": 1, "text": 1}))
    assert rrf.hits[0].score == pytest.approx(2 / 61)


def test_bm25_gate_drops_bm25_only_for_short_queries_it_does_not_explain(small_bundle, keyword_encoder):
    """"azure purse women": BM25 knows only "women", so its hits (any women's item) carry no signal and the dense
    source ranks alone; "blue bag": one item matches every word, so BM25 keeps its weight."""
    searcher = Searcher(small_bundle, keyword_encoder, SearchConfig(bm25_gate_words=5))
    scores = lambda r: [(h.id, round(h.score, 6)) for h in r.hits]  # noqa: E731
    w = SearchConfig().weights
    para = searcher.search(SearchRequest(text="azure purse women", k=5))
    top = small_bundle.bm25.search("azure purse women", 1)[0][1]
    assert small_bundle.bm25.explained_share("azure purse women", top) == pytest.approx(1 / 3)
    assert "bm25_gate" in para.timings_ms and any("bm25" in h.scores_by_source for h in para.hits)
    assert scores(para) == scores(searcher.search(SearchRequest(text="azure purse women", k=5,
                                                                weights={"bm25": 0.0, "text": w["text"]})))
    assert ids(para)[0] == "7"
    literal = searcher.search(SearchRequest(text="blue bag", k=5))
    assert scores(literal) == scores(searcher.search(SearchRequest(text="blue bag", k=5, weights={"bm25": w["bm25"]})))
    assert scores(literal) != scores(searcher.search(SearchRequest(text="blue bag", k=5, weights={"bm25": 0.0})))
    # Gate off (0 words, the default), or a query longer than bm25_gate_words: BM25 always counts.
    off = Searcher(small_bundle, keyword_encoder)
    assert scores(off.search(SearchRequest(text="azure purse women", k=5))) == scores(
        searcher.search(SearchRequest(text="azure purse women", k=5, weights={"bm25": w["bm25"]})))
    long = "azure purse for women and girls"
    assert "bm25_gate" not in searcher.search(SearchRequest(text=long, k=5)).timings_ms


@pytest.mark.parametrize("req,field", [
    (SearchRequest(text="  "), "text"),
    (SearchRequest(text="x", k=5000), "k"),
    (SearchRequest(text="x", offset=-1), "offset"),
    (SearchRequest(text="x", filters={"colour": "red"}), "filters"),
    (SearchRequest(text="x", sources=["nope"]), "sources"),
    (SearchRequest(text="x", sources=["clip_image"]), "sources"),
    (SearchRequest(text="x", weights={"bm25": -1}), "weights.bm25"),
    (SearchRequest(text="x", price_min=5, price_max=1), "price"),
    (SearchRequest(text="x" * 5000), "text"),
])
def test_invalid_requests_name_the_field(searcher, req, field):
    with pytest.raises(InvalidRequest) as err:
        searcher.search(req)
    assert err.value.field == field


def test_image_query_without_clip_index_is_unsupported(searcher):
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    with pytest.raises(Unsupported, match="CLIP"):
        searcher.search(SearchRequest(image=buf.getvalue()))


def test_config_from_dict_validates():
    assert SearchConfig.from_dict({"fusion": "rrf", "weights": {"bm25": 2}}).weights["bm25"] == 2.0
    with pytest.raises(ValueError, match="search.fusion"):
        SearchConfig.from_dict({"fusion": "magic"})
    with pytest.raises(ValueError, match="search.weights.foo"):
        SearchConfig.from_dict({"weights": {"foo": 1}})


def test_models_run_outside_the_read_lock(small_bundle, keyword_encoder):
    """Only index and docstore reads hold the live index's read lock: a waiting write never waits on a model."""
    import contextlib

    state = {"held": False, "entered": 0, "encoded_while_held": []}

    class Spy:
        name, dim = keyword_encoder.name, keyword_encoder.dim

        def encode_texts(self, texts, batch_size=64, progress=False):
            state["encoded_while_held"].append(state["held"])
            return keyword_encoder.encode_texts(texts)

    @contextlib.contextmanager
    def reading():
        state["held"] = True
        state["entered"] += 1
        try:
            yield
        finally:
            state["held"] = False

    hits = Searcher(small_bundle, Spy()).search(SearchRequest(text="crimson tee"), reading).hits
    assert hits[0].id == "1" and state["entered"] >= 1
    assert state["encoded_while_held"] == [False]
