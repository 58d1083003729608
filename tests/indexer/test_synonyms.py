"""A shop's synonyms file (Solr / Elasticsearch syntax) for the lexical source."""
from __future__ import annotations

import pytest

from vitrine.indexer.synonyms import Synonyms
from vitrine.ranking.pipeline import SearchConfig, Searcher, SearchRequest

RULES = """# a comment
tv, television
couch, sofa, settee      # three equivalent words
pc => personal computer
hoodie, hoody => sweatshirt
tv stand, television stand
"""


def test_equivalent_and_one_way_rules_expand_whole_words():
    s = Synonyms.parse(RULES)
    assert s.expand("Samsung TV-stand, 60 inch") == ["television", "television stand"]
    assert s.expand("sofa bed") == ["couch", "settee"]
    assert s.expand("black Hoodie") == ["sweatshirt"] and s.expand("sweatshirt") == []     # one-way
    assert s.expand("pc") == ["personal computer"] and s.expand("personal computer") == []
    assert s.expand("tvs and pcs") == []                                                     # whole words only


def test_a_bad_rule_or_file_is_named_by_line():
    with pytest.raises(ValueError, match="line 2: 'tv' is not a synonym rule"):
        Synonyms.parse("a, b\ntv\n")
    with pytest.raises(ValueError, match="line 1: '=> shirt'"):
        Synonyms.parse("=> shirt")
    with pytest.raises(ValueError, match="synonyms file .* does not exist"):
        Synonyms.load("/no/such/synonyms.txt")


def test_the_searcher_reads_the_tenants_synonyms(small_bundle, keyword_encoder, tmp_path):
    path = tmp_path / "synonyms.txt"
    path.write_text("tee => shirt\n")
    request = SearchRequest(text="tee", sources=["bm25"], k=3)
    assert Searcher(small_bundle, keyword_encoder).search(request).hits == []               # no item says tee
    hits = Searcher(small_bundle, keyword_encoder, SearchConfig(synonyms=str(path))).search(request).hits
    assert {h.id for h in hits} == {"1", "2"}                                                # the two shirts
