"""Typo tolerance in the lexical source: the catalog's vocabulary, AUTO edit distances, and BM25 with corrections."""
from __future__ import annotations

from collections import Counter

import pytest

from vitrine.indexer.bm25 import Bm25Config, Bm25Index
from vitrine.indexer.catalog import Item
from vitrine.indexer.vocabulary import Vocabulary, auto_edits

SHOP = [
    Item(id="1", title="Cordless Drill 18V", category="Tools > Power Tools", attributes={"brand": "DeWalt"}),
    Item(id="2", title="Corded Hammer Drill", category="Tools > Power Tools"),
    Item(id="3", title="Shower Curtain Liner", category="Bath > Shower"),
    Item(id="4", title="Shower Head Chrome", category="Bath > Shower"),
    Item(id="5", title="Curtain Rod Bronze", category="Home > Windows"),
    Item(id="6", title="Drill Bit Set", category="Tools > Accessories"),
]


@pytest.fixture()
def shop(tmp_path):
    index = Bm25Index(tmp_path / "bm25", create=True)
    index.add(enumerate(SHOP))
    index.commit()
    yield index
    index.close()


def ids(index: Bm25Index, text: str, k: int = 3) -> list[str]:
    return [SHOP[d].id for d, _ in index.search(text, k)]


def test_auto_edits_follow_elasticsearch():
    assert [auto_edits(w) for w in ("ab", "abc", "abcde", "abcdef", "abcdefghij")] == [0, 1, 1, 2, 2]


def test_a_word_is_corrected_to_the_most_used_catalog_word_at_the_fewest_edits():
    v = Vocabulary(Counter({"cordless": 5, "curtain": 3, "certain": 1, "drill": 9, "dcd771": 2, "bolt": 4, "boat": 4}))
    assert v.correct("cordles") == ("cordless", 1)          # one deletion
    assert v.correct("currtain") == ("curtain", 1)          # one doubled letter, not "certain" (2 edits)
    assert v.correct("dirll") == ("drill", 1)               # a transposition is one edit
    assert v.correct("bolt") is None                        # a catalog word is never corrected
    assert v.correct("bost") == ("boat", 1)                 # boat and bolt tie on edits and use: alphabetical first
    assert v.correct("dcd772") is None                      # model numbers and sizes are not typos
    assert v.correct("xyzzy") is None and v.correct("dr") is None
    assert v.correct("bot") is None                         # under 4 letters: left alone (Lucene's minQueryLength)
    assert v.correct("vurtain") is None                     # the first letter is kept (Lucene's minPrefix)


def test_a_misspelt_query_finds_what_the_spelling_would(shop):
    assert ids(shop, "cordles drill")[0] == "1"
    assert ids(shop, "shower currtain")[0] == "3"
    assert shop.corrections(["cordles", "drill", "for", "currtain"]) == {"cordles": ("cordless", 1),
                                                                         "currtain": ("curtain", 1)}
    assert shop.corrections(["drills", "showers"]) == {}     # known after stemming: nothing to correct


def test_an_exact_word_outranks_its_correction(tmp_path):
    """"curtian" is both a catalog word (one item spells it so) and one edit from "curtain": the exact word wins."""
    index = Bm25Index(tmp_path / "bm25", create=True)
    index.add(enumerate([Item(id="a", title="Curtain"), Item(id="b", title="Curtian")]))
    index.commit()
    assert [d for d, _ in index.search("curtian", 2)] == [1]   # no correction for a word the catalog uses
    index.close()


def test_typo_tolerance_can_be_turned_off(shop):
    assert shop.search("currtain", 3, typos=False) == []
    assert sorted(ids(shop, "currtain")) == ["3", "5"]


def test_the_vocabulary_is_kept_with_the_index_and_grows_with_live_writes(shop):
    shop.add([(len(SHOP), Item(id="7", title="Jigsaw Blades"))])
    shop.commit()
    reopened = Bm25Index(shop.path)
    assert "jigsaw" in reopened.vocabulary and reopened.vocabulary.counts["drill"] == 3
    assert reopened.corrections(["jigsae"]) == {"jigsae": ("jigsaw", 1)}
    reopened.close()


def test_an_index_from_before_the_vocabulary_searches_without_corrections(shop):
    (shop.path / "vocabulary.json").unlink()
    old = Bm25Index(shop.path)
    assert old.vocabulary is None and old.corrections(["cordles"]) == {}
    assert ids(old, "cordless drill")[0] == "1"
    old.close()


def test_sizes_and_units_match_however_they_are_written(tmp_path):
    from vitrine.indexer.units import unit_tokens

    assert unit_tokens('1/2 in. plywood') == unit_tokens("0.5 inch plywood") == ["0d5in"]
    assert unit_tokens("8 x 10 rug") == unit_tokens("8x10 rug") == ["8x10"]
    assert unit_tokens('a 60" tv') == unit_tokens("60 inch tv") == ["60in"]
    assert unit_tokens("dewalt dcd771") == [] and unit_tokens("men in black") == []
    index = Bm25Index(tmp_path / "bm25", create=True)
    index.add(enumerate([Item(id="a", title="Plywood Sheet 1/2 in. x 4 ft. x 8 ft."), Item(id="b", title="Plywood Sheet 3/4 in."),
                         Item(id="c", title='TV Stand for TVs up to 60"'), Item(id="d", title="TV Stand 42 in.")]))
    index.commit()
    assert [d for d, _ in index.search("0.5 inch plywood", 2)][0] == 0
    assert [d for d, _ in index.search("60 inch tv stand", 2)][0] == 2
    index.close()


def test_compounds_match_joined_or_split(tmp_path):
    index = Bm25Index(tmp_path / "bm25", create=True)
    index.add(enumerate([Item(id="a", title="Deckover Paint Gallon"), Item(id="b", title="Deck Stain"),
                         Item(id="c", title="Shower Curtain"), Item(id="d", title="Paint Roller")]))
    index.commit()
    assert index.compounds(["deck", "over", "paint"]) == ["deckover"]
    assert [d for d, _ in index.search("deck over paint", 1)] == [0]
    assert index.compounds(["showercurtain"]) == ["shower", "curtain"]
    assert [d for d, _ in index.search("showercurtain", 1)] == [2]
    index.close()


def test_the_dense_source_reads_the_query_spelt_right(small_bundle, keyword_encoder):
    """A typo is corrected once per query: BM25 searches both spellings, the dense encoders read the corrected text,
    and the result says what was corrected (shown in explanations)."""
    from vitrine.ranking.pipeline import SearchConfig, Searcher, SearchRequest

    on = Searcher(small_bundle, keyword_encoder).search(SearchRequest(text="red shrit", sources=["text"], k=2))
    assert on.corrected == {"shrit": "shirt"} and on.hits[0].id == "1"      # the Red Shirt, by the dense source alone
    off = Searcher(small_bundle, keyword_encoder, SearchConfig(typos=False)).search(
        SearchRequest(text="red shrit", sources=["text"], k=2))
    assert off.corrected == {} and off.hits[0].id != "1"                     # "red" alone: the first red item


def test_a_real_word_the_catalog_does_not_use_is_not_a_typo(tmp_path):
    """"snow" is one edit from the catalog's "show", but the text model knows it as a word: it is left alone, while
    "shwer" (no model's word) is corrected. model_words reads those words from a tokenizer.json's WordPiece vocab."""
    import json

    from vitrine.indexer.vocabulary import model_words

    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"snow": 1, "##ing": 2, "the": 3, "Snow": 4,
                                                                             "shower": 5}}}))
    known = model_words(tmp_path / "tokenizer.json")
    assert known == {"snow", "shower"} and model_words(tmp_path / "missing.json") == frozenset()
    index = Bm25Index(tmp_path / "bm25", create=True, known_words=known)
    index.add(enumerate([Item(id="a", title="Shower Head"), Item(id="b", title="Talent Show Poster")]))
    index.commit()
    assert index.corrections(["snow", "shwer"]) == {"shwer": ("shower", 1)}
    index.close()


def test_a_word_written_live_is_a_correction_at_once():
    v = Vocabulary(Counter({"drill": 2}))
    assert v.correct("drilll") == ("drill", 1)            # the candidates are built now ...
    v.add(["Jigsaw Blades"])
    assert v.correct("jigsae") == ("jigsaw", 1)           # ... and a live write's words join them
