"""What a shop's result page needs: filters beyond one value, facets, sorting and browsing, highlights,
merchandising rules and more-like-this, on a small bundle with a numeric attribute."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from tests.conftest import make_items
from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bundle import Bundle, IndexerConfig, build_bundle
from vitrine.indexer.columns import FieldFilter
from vitrine.ranking.facets import FacetSpec
from vitrine.ranking.pipeline import InvalidRequest, SearchConfig, Searcher, SearchRequest
from vitrine.ranking.rules import BoostRule, PinRule, Rules

RATING = {"1": "4.5", "2": "3", "3": "5", "4": "2.5", "5": "4", "6": "4.5", "7": "1"}  # item 8 has none


@pytest.fixture(scope="module")
def shop_bundle_path(tmp_path_factory, keyword_encoder) -> str:
    items = [replace(it, attributes={**it.attributes, **({"rating": RATING[it.id]} if it.id in RATING else {})})
             for it in make_items()]
    out = tmp_path_factory.mktemp("shop") / "bundle"
    build_bundle(items, out, keyword_encoder, IndexerConfig(ann=AnnConfig(factory="Flat"), progress=False))
    return str(out)


@pytest.fixture()
def searcher(shop_bundle_path, keyword_encoder):
    bundle = Bundle(shop_bundle_path)
    yield Searcher(bundle, keyword_encoder)
    bundle.close()


def ids(result):
    return [h.id for h in result.hits]


def items_of(searcher):
    return {it.id: it for it in searcher.bundle.docstore.items.values()}


def test_where_any_none_range_and_presence(searcher):
    browse = lambda *where: set(ids(searcher.search(SearchRequest(k=100, where=where))))  # noqa: E731
    assert browse(FieldFilter("color", any_of=("red", "BLUE"))) == {"1", "2", "4", "7"}
    assert browse(FieldFilter("color", none_of=("black",)), FieldFilter("gender", any_of=("women",))) == {"2", "4", "7"}
    assert browse(FieldFilter("rating", min=4)) == {"1", "3", "5", "6"}
    assert browse(FieldFilter("rating", exists=False)) == {"8"}
    assert browse(FieldFilter("price", min=50, max=70)) == {"3", "4", "8"}
    assert browse(FieldFilter("category", any_of=("Footwear",))) == {"5", "8"}   # a path matches the paths below it
    # The text query path filters the same way, in BM25 and in the dense source.
    got = ids(searcher.search(SearchRequest(text="black", k=10, where=(FieldFilter("rating", min=4.5),))))
    assert set(got) <= {"1", "3", "6"} and {"3", "6"} <= set(got)


@pytest.mark.parametrize("where, field, words", [
    (FieldFilter("colour", any_of=("red",)), "where.colour", "unknown field"),
    (FieldFilter("color", min=1), "where.color", "not a number"),
    (FieldFilter("price", any_of=("10",)), "where.price", "min/max"),
    (FieldFilter("rating", min=5, max=1), "where.rating", "greater than max"),
])
def test_bad_filters_name_the_field(searcher, where, field, words):
    with pytest.raises(InvalidRequest) as err:
        searcher.search(SearchRequest(text="shirt", where=(where,)))
    assert err.value.field == field and words in str(err.value)


def test_facets_equal_a_brute_force_count_over_the_candidates(searcher):
    result = searcher.search(SearchRequest(text="black red shoe", k=2, facets=(FacetSpec("color"), FacetSpec("gender"))))
    assert result.facet_scope == "candidates"
    every = searcher.search(SearchRequest(text="black red shoe", k=100))
    catalog = items_of(searcher)
    for facet in result.facets:
        brute = Counter(catalog[h.id].attributes[facet.field] for h in every.hits)
        assert {v.value: v.count for v in facet.values} == dict(brute)
        assert facet.counted == len(every.hits) == result.total_candidates


def test_browse_facets_are_disjunctive_for_the_filtered_field(searcher):
    req = SearchRequest(filters={"gender": "Women"}, where=(FieldFilter("color", any_of=("black",)),),
                        facets=(FacetSpec("color"), FacetSpec("gender"), FacetSpec("rating", ranges=(3.0, 4.5))))
    result = searcher.search(req)
    assert result.mode == "browse" and result.facet_scope == "catalog" and set(ids(result)) == {"3", "8"}
    color, gender, rating = result.facets
    # Colour counts leave out the colour filter (every women's colour), gender counts leave out gender's.
    assert {v.value: v.count for v in color.values} == {"Black": 2, "Blue": 2, "Red": 1}
    assert color.disjunctive and [v.value for v in color.values if v.selected] == ["Black"]
    assert {v.value: v.count for v in gender.values} == {"Women": 2, "Men": 1}
    assert [(b.min, b.max, b.count) for b in rating.buckets] == [(None, 3.0, 0), (3.0, 4.5, 0), (4.5, None, 1)]
    assert rating.missing == 1 and not rating.disjunctive


def test_sort_by_price_with_relevance_tie_break_and_browse_pages(searcher):
    result = searcher.search(SearchRequest(text="black", k=10, sort="price", descending=True))
    prices = [result.sort_values[h.id] for h in result.hits]
    priced = [p for p in prices if p == p]
    assert priced == sorted(priced, reverse=True) and prices[-1] != prices[-1]  # the watch has no price: last
    pages = [ids(searcher.search(SearchRequest(sort="rating", k=3, offset=o))) for o in (0, 3, 6)]
    whole = ids(searcher.search(SearchRequest(sort="rating", k=9)))
    assert sum(pages, []) == whole and whole[:2] == ["7", "4"] and whole[-1] == "8"
    # Pages of a sorted query never overlap, even past the candidate depth (3 here).
    shallow = Searcher(searcher.bundle, searcher.text_encoder, SearchConfig(candidates=3))
    pages = [shallow.search(SearchRequest(text="black shoe", sort="price", k=2, offset=o)) for o in (0, 2, 4)]
    paged = [h.id for r in pages for h in r.hits]
    prices = [r.sort_values[h.id] for r in pages for h in r.hits]
    assert paged and len(paged) == len(set(paged))
    assert [p for p in prices if p == p] == sorted(p for p in prices if p == p)
    with pytest.raises(InvalidRequest) as err:
        searcher.search(SearchRequest(text="shirt", sort="color"))
    assert err.value.field == "sort.field"


def test_highlights_mark_stemmed_words_and_say_when_nothing_matched(searcher):
    result = searcher.search(SearchRequest(text="dresses", k=8, highlight=True))
    red = result.highlights["4"]
    assert red and red[0].field == "title" and "<b>Dress</b>" in red[0].html
    start, end = red[0].spans[0]
    assert red[0].fragment[start:end] == "Dress"
    dense_only = [h.id for h in result.hits if "bm25" not in h.scores_by_source]
    assert dense_only and all(result.highlights[i] == [] for i in dense_only)


def test_boost_bury_pin_hide_and_min_score(searcher):
    base = ids(searcher.search(SearchRequest(text="black", k=8)))
    boosted = searcher.search(SearchRequest(text="black", k=8, rules=Rules(boost=(BoostRule("gender", "men", factor=3),))))
    assert ids(boosted)[0] in {"6", "5", "1"} and ids(boosted) != base
    assert any(r.startswith("boost gender=men") for r in boosted.rules[ids(boosted)[0]])
    rules = Rules(pin=(PinRule("7", 1),), hide=("3",), min_score=0.01)
    pinned = searcher.search(SearchRequest(text="black", k=8, rules=rules))
    assert ids(pinned)[0] == "7" and "3" not in ids(pinned) and pinned.rules["7"] == ["pinned at 1"]
    assert all(h.score >= 0.01 for h in pinned.hits if h.id != "7")
    # An id pinned twice is shown once, at its first pin.
    twice = ids(searcher.search(SearchRequest(text="black", k=8, rules=Rules(pin=(PinRule("7", 1), PinRule("7", 3))))))
    assert twice[0] == "7" and twice.count("7") == 1
    # A pinned id the filters exclude is not shown.
    assert "7" not in ids(searcher.search(SearchRequest(text="black", rules=rules, filters={"color": "Black"})))


def test_configured_rules_apply_per_query_and_a_request_can_opt_out(shop_bundle_path, keyword_encoder):
    config = SearchConfig.from_dict({"rules": {"pin": [{"id": "2", "position": 1, "query": "Black  SHOE"}],
                                               "hide": ["8"]}})
    bundle = Bundle(shop_bundle_path)
    try:
        searcher = Searcher(bundle, keyword_encoder, config)
        assert ids(searcher.search(SearchRequest(text="black shoe")))[0] == "2"
        assert "8" not in ids(searcher.search(SearchRequest(text="black shoe")))
        assert ids(searcher.search(SearchRequest(text="black dress")))[0] != "2"
        assert "8" in ids(searcher.search(SearchRequest(text="black shoe", no_rules=True)))
    finally:
        bundle.close()
    with pytest.raises(ValueError, match="search.rules.boost.0..factor|search.rules.boost\\[0\\].factor"):
        SearchConfig.from_dict({"rules": {"boost": [{"field": "color", "value": "red", "factor": -1}]}})


def test_more_like_this_uses_the_items_vectors_and_leaves_it_out(searcher):
    result = searcher.search(SearchRequest(like_id="3", k=3, explain=True))
    assert "3" not in ids(result) and result.mode == "like"
    assert ids(result)[0] in {"6", "8"}            # the other black items are nearest to the black dress
    # Text sent with it joins the item's own text vector ("like this, but a shoe"); sources still restrict.
    shoe = searcher.search(SearchRequest(like_id="3", text="shoe", k=3, sources=("text",)))
    assert ids(shoe)[0] == "8" and set(shoe.hits[0].scores_by_source) == {"text"}
    assert ids(searcher.search(SearchRequest(like_id="3", sources=("bm25",)))) == []
    filtered = searcher.search(SearchRequest(like_id="3", k=3, filters={"gender": "Men"}))
    assert set(ids(filtered)) <= {"1", "5", "6"}
    with pytest.raises(InvalidRequest) as err:
        searcher.search(SearchRequest(like_id="nope"))
    assert err.value.field == "like_id"
