"""Cross-encoder re-ranking: the pure re-ordering core, and the trainer learning a toy task."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from vitrine.ranking.rerank import CrossEncoderReranker, RerankConfig, blend_scores, rerank_scores, truncate_doc
from vitrine.ranking.types import Hit, SourceHit
from vitrine.trainer.reranker import (RerankerTask, RerankerTrainConfig, check_disjoint, rerank_ndcg, split_queries,
                                      train_reranker)


def test_rerank_scores_reorders_the_head_and_keeps_the_tail_below():
    hits = [Hit(str(i), 10.0 - i, {"bm25": SourceHit(10.0 - i, i + 1)}) for i in range(5)]
    out = rerank_scores([0.1, 0.9, 0.5], hits)
    assert [h.id for h in out] == ["1", "2", "0", "3", "4"]
    assert out[0].scores_by_source["cross"] == SourceHit(0.9, 1)
    assert out[0].scores_by_source["bm25"].rank == 2          # first-stage evidence is kept
    assert "cross" not in out[3].scores_by_source
    assert all(a.score > b.score for a, b in zip(out, out[1:]))
    with pytest.raises(ValueError, match=r"got 6 scores \(6 raw\) for 5 hits"):
        rerank_scores(np.zeros(6), hits)


def test_blended_order_records_the_raw_cross_encoder_score_and_rank():
    hits = [Hit(str(i), 1.0 - i / 10, {}) for i in range(3)]
    cross = np.array([0.0, 5.0, 1.0])
    blended = blend_scores(np.array([h.score for h in hits]), cross, alpha=0.2)
    out = rerank_scores(blended, hits, raw=cross)
    assert [h.id for h in out] == ["0", "1", "2"]                  # mostly first stage at alpha 0.2
    assert out[1].scores_by_source["cross"] == SourceHit(5.0, 1)   # features see the raw score and its rank
    np.testing.assert_allclose(blend_scores(np.array([3.0, 1.0]), np.array([0.0, 2.0]), 1.0), [0.0, 1.0])
    np.testing.assert_allclose(blend_scores(np.array([3.0, 1.0]), np.array([0.0, 2.0]), 0.0), [1.0, 0.0])


def test_truncate_doc_cuts_at_a_word_boundary():
    assert truncate_doc("alpha beta gamma", 100) == "alpha beta gamma"
    assert truncate_doc("alpha beta gamma delta", 13) == "alpha beta"


def test_rerank_config_names_bad_fields():
    with pytest.raises(ValueError, match="rerank.batch_size"):
        RerankConfig.from_dict({"batch_size": 0})
    with pytest.raises(ValueError, match="rerank.depth"):
        RerankConfig.from_dict({"depth": 500})
    with pytest.raises(ValueError, match="Unknown key"):
        RerankConfig.from_dict({"deep": 1})


def test_check_disjoint_refuses_test_queries_by_id_and_by_text():
    texts = {"1": "Aspirin lowers risk", "2": "Other claim", "9": "aspirin  LOWERS risk"}
    with pytest.raises(ValueError, match="leak the test set"):
        check_disjoint(["1", "2"], {"1": "test.tsv"}, texts)
    # The same claim filed under another id is dropped from training, not trained on.
    assert check_disjoint(["1", "2"], {"9": "test.tsv"}, texts) == ["2"]
    assert check_disjoint(["2"], {"1": "test.tsv"}, texts) == ["2"]


def test_split_queries_is_deterministic_and_disjoint():
    a = split_queries([str(i) for i in range(100)], 0.1, 0.3, seed=1)
    assert a == split_queries([str(i) for i in range(100)], 0.1, 0.3, seed=1)
    train, held, reserved = map(set, a)
    assert (len(train), len(held), len(reserved)) == (60, 10, 30)
    assert not (train & held) and not (train & reserved) and not (held & reserved)


def _toy_task(n_queries: int = 40):
    """Each query asks for an object; the one relevant candidate is the genuine-leather one among plastic ones."""
    objects = ["shirt", "dress", "shoe", "bag", "watch", "scarf", "hat", "belt"]
    rng = random.Random(0)
    docs, queries, qrels, candidates = {}, {}, {}, {}
    for q in range(n_queries):
        obj = objects[q % len(objects)]
        ids = [f"q{q}d{j}" for j in range(8)]
        for j, doc_id in enumerate(ids):
            docs[doc_id] = f"{obj} made of genuine leather" if j == 0 else f"{obj} made of {rng.choice(['plastic', 'nylon', 'vinyl'])}"
        rng.shuffle(ids)
        queries[str(q)] = f"leather {obj}"
        qrels[str(q)] = {f"q{q}d0": 1}
        candidates[str(q)] = ids
    return queries, qrels, docs, candidates


def test_reranker_trainer_learns_a_toy_task(tiny_cross_encoder_dir, tmp_path):
    queries, qrels, docs, candidates = _toy_task()
    config = RerankerTrainConfig(epochs=4, batch_queries=4, negatives=3, lr=1e-3, holdout=0.25, max_length=32, patience=4)
    first = {q: [1.0 - j / 10 for j in range(len(c))] for q, c in candidates.items()}   # first stage: no signal
    summary = train_reranker(tiny_cross_encoder_dir, tmp_path / "ce", RerankerTask(queries, qrels, docs, candidates, first),
                             config, device="cpu", progress=False, log=lambda m: None)
    assert summary["blend"] >= 0.5   # the first stage knows nothing here, so the cross-encoder gets the weight
    assert summary["heldout"]["ndcg@10"] > summary["heldout"]["first_stage_ndcg@10"] + 0.2
    assert summary["heldout"]["ndcg@10"] > 0.8
    saved = json.loads((tmp_path / "ce" / "training.json").read_text())
    assert set(saved["train_qids"]).isdisjoint(saved["heldout_qids"])
    assert (tmp_path / "ce" / "metrics.json").is_file()
    # The saved directory loads as the server loads it and ranks held-out queries as well as during training.
    model = CrossEncoderReranker(str(tmp_path / "ce"), RerankConfig(max_length=32), device="cpu")
    again = rerank_ndcg(model.score, saved["heldout_qids"], queries, candidates, docs, qrels)
    assert again == pytest.approx(summary["heldout"]["ndcg@10"], abs=1e-6)


def test_reranker_generated_queries_only_train(tiny_cross_encoder_dir, tmp_path):
    """Pseudo-queries from the catalog (`always_train`) add training signal but never decide the held-out split."""
    queries, qrels, docs, candidates = _toy_task(48)
    generated = [q for q in queries if int(q) % 2]
    config = RerankerTrainConfig(epochs=4, batch_queries=4, negatives=3, lr=1e-3, holdout=0.25, max_length=32, patience=4)
    summary = train_reranker(tiny_cross_encoder_dir, tmp_path / "ce",
                             RerankerTask(queries, qrels, docs, candidates, always_train=generated), config,
                             device="cpu", progress=False, log=lambda m: None)
    assert set(generated) <= set(summary["train_qids"]) and not set(generated) & set(summary["heldout_qids"])
    assert len(summary["heldout_qids"]) == 6   # a quarter of the 24 real queries
    assert summary["heldout"]["ndcg@10"] > summary["heldout"]["first_stage_ndcg@10"] + 0.2


def test_generated_reranker_queries_come_from_the_catalog():
    from vitrine.indexer.catalog import Item
    from vitrine.trainer.text_pairs import generated_queries

    items = [Item(id=str(i), title=f"Red Shirt {i}", attributes={"color": "Red", "article_type": "Shirts"}) for i in range(5)]
    got = generated_queries(items, ["attributes", "title"], 7, seed=0)
    assert got == generated_queries(items, ["attributes", "title"], 7, seed=0) and len(got) == 7
    assert all(text and item_id in {it.id for it in items} for text, item_id in got.values())
    assert generated_queries(items, [], 7, seed=0) == {}


def test_reranker_scores_are_cached_and_batched_consistently(tiny_cross_encoder_dir):
    model = CrossEncoderReranker(tiny_cross_encoder_dir, RerankConfig(batch_size=2, max_length=32), device="cpu")
    docs = ["red shirt", "blue dress", "green shoe", "black bag", "white hat"]
    first = model.score("red shirt", docs)
    assert len(model._cache) == 5
    again = model.score("red shirt", docs[::-1])
    np.testing.assert_allclose(again, first[::-1], atol=1e-5)
    unbatched = CrossEncoderReranker(tiny_cross_encoder_dir, RerankConfig(batch_size=16, max_length=32, cache_size=0), device="cpu")
    np.testing.assert_allclose(unbatched.score("red shirt", docs), first, atol=1e-4)


def test_listwise_batches_cap_positives_and_take_lower_grades_as_negatives():
    from vitrine.trainer.reranker import listwise_batches

    qrels = {"q": {f"d{i}": 2 if i < 5 else 1 for i in range(10)}}      # 5 exact matches, 5 partial
    candidates = {"q": [f"d{i}" for i in range(10)] + ["x1", "x2"]}
    groups = [g for batch in listwise_batches(["q"], qrels, candidates, 3, 8, random.Random(0), max_positives=2) for g in batch]
    assert len(groups) == 2
    for _, pos, negs in groups:
        assert qrels["q"][pos] == 2
        assert all(qrels["q"].get(n, 0) < 2 for n in negs)          # partial matches count as negatives
