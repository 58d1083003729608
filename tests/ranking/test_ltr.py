"""LightGBM ranker: learns a synthetic ranking decided by one feature, explains itself, guards its schema."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vitrine.indexer.catalog import Item
from vitrine.ranking.features import FEATURES, QueryContext, candidate_features, features_from_dict, features_to_dict
from vitrine.ranking.ltr import LtrRanker, LtrRows, LtrTrainConfig, group_split, train_ranker
from vitrine.ranking.metrics import ndcg_at_k
from vitrine.ranking.types import Hit, SourceHit


def _synthetic(n_queries: int, per_query: int, seed: int):
    """Relevance is decided by cross_score alone; every other feature is noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_queries * per_query, len(FEATURES)))
    signal = X[:, FEATURES.index("cross_score")]
    y = np.zeros(len(X), dtype=np.int32)
    qids = []
    for q in range(n_queries):
        rows = slice(q * per_query, (q + 1) * per_query)
        order = np.argsort(-signal[rows])
        grades = np.zeros(per_query, dtype=np.int32)
        grades[order[:2]] = 2
        grades[order[2:5]] = 1
        y[rows] = grades
        qids += [f"q{q}"] * per_query
    return X, y, qids


def test_ranker_learns_the_feature_that_decides_relevance(tmp_path):
    X, y, qids = _synthetic(120, 20, seed=0)
    summary = train_ranker(LtrRows(X, y, qids), tmp_path / "ltr", LtrTrainConfig(n_estimators=200), log=lambda m: None)
    assert summary["valid"]["ndcg@10"] > 0.95
    importances = json.loads((tmp_path / "ltr" / "importances.json").read_text())
    assert importances[0]["feature"] == "cross_score"
    ranker = LtrRanker(tmp_path / "ltr")
    Xt, yt, qt = _synthetic(30, 20, seed=1)
    ndcgs = []
    for q in range(30):
        rows = slice(q * 20, (q + 1) * 20)
        scores = ranker.predict(Xt[rows])
        ranked = [str(i) for i in np.argsort(-scores)]
        ndcgs.append(ndcg_at_k(ranked, {str(i): int(g) for i, g in enumerate(yt[rows])}, 10))
    assert np.mean(ndcgs) > 0.95
    contrib, names = ranker.contributions(Xt[:20])
    assert names[-1] == "bias" and contrib.shape == (20, len(FEATURES) + 1)
    np.testing.assert_allclose(contrib.sum(axis=1), ranker.predict(Xt[:20]), atol=1e-6)  # SHAP sums to the score
    assert np.abs(contrib[:, FEATURES.index("cross_score")]).mean() > np.abs(contrib[:, FEATURES.index("price")]).mean()


def test_position_bias_training_accepts_click_positions(tmp_path):
    X, y, qids = _synthetic(60, 10, seed=2)
    positions = np.tile(np.arange(10), 60)
    summary = train_ranker(LtrRows(X, (y > 1).astype(np.int32), qids, positions), tmp_path / "ltr",
                           LtrTrainConfig(n_estimators=50), log=lambda m: None)
    assert summary["position_bias"] is True
    assert LtrRanker(tmp_path / "ltr").predict(X[:10]).shape == (10,)


def test_group_split_never_splits_a_query():
    qids = [f"q{i // 5}" for i in range(100)]
    train, valid = group_split(qids, 0.2, seed=0)
    assert {q for q, m in zip(qids, valid) if m}.isdisjoint({q for q, m in zip(qids, train) if m})
    assert valid.sum() == 20


def test_ranker_refuses_another_feature_schema(tmp_path):
    X, y, qids = _synthetic(20, 10, seed=3)
    train_ranker(LtrRows(X, y, qids), tmp_path / "ltr", LtrTrainConfig(n_estimators=5, early_stopping_rounds=5),
                 log=lambda m: None)
    meta = json.loads((tmp_path / "ltr" / "ranker.json").read_text())
    meta["schema_version"] = 999
    (tmp_path / "ltr" / "ranker.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="schema 999"):
        LtrRanker(tmp_path / "ltr")


def test_candidate_features_read_sources_items_and_query():
    hits = [Hit("a", 1.0, {"bm25": SourceHit(8.0, 1), "text": SourceHit(0.5, 3), "fused": SourceHit(1.0, 1)}),
            Hit("b", 0.5, {"bm25": SourceHit(4.0, 2), "fused": SourceHit(0.5, 2)})]
    items = [Item(id="a", title="Red Shirt", attributes={"color": "Red"}, price=20.0), None]
    q = QueryContext("red shirt for men", "text", {"gender": "Men"}, {"color": "red"}, depth=100)
    X = candidate_features(q, hits, items)
    row = dict(zip(FEATURES, X[0]))
    assert row["bm25_rel"] == 1.0 and row["text_rank"] == 3 and row["clip_image_rank"] == 101
    assert np.isnan(row["clip_image_score"]) and row["n_sources"] == 2
    assert row["query_title_overlap"] == pytest.approx(2 / 4) and row["query_attr_matches"] == 1
    assert row["price"] == 20.0 and row["filter_count"] == 1 and row["mode"] == 0
    assert dict(zip(FEATURES, X[1]))["bm25_rel"] == 0.5 and np.isnan(dict(zip(FEATURES, X[1]))["price"])
    np.testing.assert_array_equal(features_from_dict(features_to_dict(X[1])), X[1])
