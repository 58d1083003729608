from __future__ import annotations

import pytest

from vitrine.ranking.fusion import FusionMethod, fuse, rrf, weighted


def test_rrf_scores_exactly():
    hits = rrf({"bm25": [("a", 9.0), ("b", 5.0)], "text": [("b", 0.9), ("c", 0.8)]}, k=60)
    scores = {h.id: h.score for h in hits}
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["a"] == pytest.approx(1 / 61)
    assert [h.id for h in hits] == ["b", "a", "c"]
    assert hits[0].scores_by_source["bm25"].rank == 2 and hits[0].scores_by_source["text"].score == 0.9


def test_weighted_normalises_each_list_and_honours_weights():
    lists = {"bm25": [("a", 10.0), ("b", 6.0), ("c", 2.0)], "text": [("c", 0.9), ("b", 0.5)]}
    hits = weighted(lists, {"bm25": 0.25, "text": 0.75})
    scores = {h.id: h.score for h in hits}
    assert scores["a"] == pytest.approx(0.25)
    assert scores["b"] == pytest.approx(0.25 * 0.5)
    assert scores["c"] == pytest.approx(0.75)
    assert [h.id for h in hits] == ["c", "a", "b"]


def test_zero_weight_source_still_lists_its_docs_last():
    hits = weighted({"bm25": [("a", 1.0)], "text": [("b", 0.5)]}, {"bm25": 1.0, "text": 0.0})
    assert [h.id for h in hits] == ["a", "b"]


def test_ties_break_by_id_and_dispatch():
    lists = {"x": [("b", 1.0), ("a", 1.0)]}
    assert [h.id for h in fuse(lists, FusionMethod.WEIGHTED)] == ["a", "b"]
    assert [h.id for h in fuse({"x": [("b", 1.0)], "y": [("a", 1.0)]}, FusionMethod.RRF)] == ["a", "b"]
