from __future__ import annotations

import numpy as np
import pytest

from vitrine.indexer.bm25 import Bm25Config, Bm25Index, Restrict
from vitrine.indexer.catalog import Item
from vitrine.indexer.docstore import DocStore, filter_terms

THREE = [
    Item(id="a", title="Red running shoe", category="Footwear > Shoes", attributes={"color": "Red"}, price=50.0),
    Item(id="b", title="Blue denim jacket", description="A warm jacket for winter", attributes={"color": "Blue"}, price=80.0),
    Item(id="c", title="Red silk scarf", category="Accessories", attributes={"color": "Red"}),
]


@pytest.fixture()
def three(tmp_path):
    bm = Bm25Index(tmp_path / "bm25", Bm25Config(), create=True)
    bm.add(enumerate(THREE))
    bm.commit()
    return bm


def test_bm25_ranks_and_stems(three):
    hits = three.search("shoes", 10)
    assert [d for d, _ in hits] == [0]
    hits = three.search("red", 10)
    assert {d for d, _ in hits} == {0, 2}
    assert three.search("winter jackets", 10)[0][0] == 1


def test_bm25_filters_and_price_range(three):
    assert {d for d, _ in three.search("red", 10, Restrict({"color": "red"}))} == {0, 2}
    assert {d for d, _ in three.search("red", 10, Restrict({"category": "Footwear"}))} == {0}
    assert three.search("red", 10, Restrict({"color": "Blue"})) == []
    assert {d for d, _ in three.search("red blue", 10, Restrict(price_min=40, price_max=60))} == {0}


def test_bm25_restricted_to_doc_numbers(three):
    # Any other condition arrives as the doc numbers it allows: a short list as Tantivy terms, a long one after.
    assert {d for d, _ in three.search("red", 10, Restrict(only=np.array([2, 1])))} == {2}
    assert three.search("red", 10, Restrict(only=np.array([], dtype=np.int64))) == []


def test_bm25_wide_filters_are_applied_after_an_over_fetch(three, monkeypatch):
    monkeypatch.setattr("vitrine.indexer.bm25.ONLY_AS_TERMS", 0)
    assert {d for d, _ in three.search("red", 10, Restrict(only=np.array([2, 1])))} == {2}
    assert {d for d, _ in three.search("red", 10, Restrict(only=np.array([0, 2])))} == {0, 2}


def test_bm25_wide_filter_finds_allowed_items_ranked_below_the_over_fetch(tmp_path, monkeypatch):
    """The allowed half of the catalog all ranks below the other half: the over-fetch deepens until it finds them."""
    monkeypatch.setattr("vitrine.indexer.bm25.ONLY_AS_TERMS", 0)
    index = Bm25Index(tmp_path / "bm25", create=True)
    index.add([(d, Item(id=str(d), title="shirt" if d % 2 else "shirt shirt shirt")) for d in range(400)])
    index.commit()
    odd = np.arange(1, 400, 2)
    got = index.search("shirt", 10, Restrict(only=odd))
    assert len(got) == 10 and all(d % 2 for d, _ in got)


def test_bm25_query_syntax_is_plain_text(three):
    assert three.search('red" AND (title:', 10)
    assert three.search("!!! ::: ***", 10) == []


def test_bm25_delete_is_visible_after_commit(three):
    three.delete([0])
    three.commit()
    assert {d for d, _ in three.search("red", 10)} == {2}


def test_docstore_filters_ids_and_persistence(tmp_path):
    ds = DocStore(tmp_path / "d.sqlite")
    ds.put_many(ds.assign(THREE))
    assert set(ds.allowed({"color": "RED"})) == {0, 2}
    assert set(ds.allowed({"category": "Footwear > Shoes"})) == {0}
    assert set(ds.allowed({}, price_min=60)) == {1}
    assert ds.allowed({}) is None
    with pytest.raises(ValueError, match="unknown filter field 'size'"):
        ds.allowed({"size": "M"})
    # Upsert replaces under a new doc number; the old one is gone everywhere.
    (docno, _), = ds.assign([Item(id="a", title="Green shoe", attributes={"color": "Green"})])
    ds.put_many([(docno, Item(id="a", title="Green shoe", attributes={"color": "Green"}))])
    assert ds.docno_by_id["a"] == docno == 3 and 0 not in ds.items
    assert set(ds.allowed({"color": "red"})) == {2}
    assert ds.delete_ids(["c", "zzz"]) == [2]
    ds.close()
    again = DocStore(tmp_path / "d.sqlite")
    assert sorted(again.docno_by_id) == ["a", "b"] and again.next_docno == 4
    assert again.get("a").title == "Green shoe"


def test_filter_terms_cover_category_prefixes():
    assert filter_terms(THREE[0]) == ["category=footwear", "category=footwear > shoes", "color=red"]
