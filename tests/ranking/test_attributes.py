"""The photo-attribute boost: an item gains the bonus for what its catalog lists, and a copy of the query photo for
everything the query photo shows (issues 23 and 26: a product's own photo must not rank below look-alikes)."""
from __future__ import annotations

from vitrine.ranking.attributes import boost, same_photo
from vitrine.ranking.types import Hit, SourceHit


def test_a_copy_of_the_query_photo_shows_what_the_photo_shows(small_bundle):
    predicted = {"color": ("black", 0.9)}
    # Item 1 is red in the catalog; its photo is the query photo (cosine 0.995). Item 3 is black, a look-alike.
    hits = [Hit("1", 1.0, {"clip_image": SourceHit(0.995, 1)}), Hit("3", 0.9, {"clip_image": SourceHit(0.9, 2)})]
    shown = same_photo(hits, "image", predicted, 0.98)
    assert shown == {"1": {"color": "black"}}
    assert same_photo(hits, "composed", predicted, 0.98) == {}
    bonus = {"color": ("black", 0.3)}
    without = boost(hits, small_bundle.docstore, bonus, "attributes")
    assert [h.id for h in without] == ["3", "1"]          # the look-alike's catalog colour wins without the rule
    ranked = boost(hits, small_bundle.docstore, bonus, "attributes", shown)
    assert [h.id for h in ranked] == ["1", "3"] and ranked[0].scores_by_source["attributes"].score == 0.3
