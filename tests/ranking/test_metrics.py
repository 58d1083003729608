from __future__ import annotations

import numpy as np
import pytest
from ranx import Qrels, Run
from ranx import evaluate as ranx_evaluate

from vitrine.ranking.metrics import evaluate, load_qrels, ndcg_at_k


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(60)]
    qrels, run = {}, {}
    for q in range(40):
        judged = rng.choice(docs, size=rng.integers(1, 8), replace=False)
        qrels[f"q{q}"] = {d: int(rng.integers(1, 3)) for d in judged}
        run[f"q{q}"] = list(rng.choice(docs, size=rng.integers(5, 60), replace=False))
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_agree_with_ranx(seed):
    qrels, run = random_case(seed)
    ours = evaluate(run, qrels)
    ranx_run = Run({q: {d: float(len(ds) - i) for i, d in enumerate(ds)} for q, ds in run.items()})
    names = [f"{m}@{k}" for m in ("ndcg", "mrr", "recall") for k in (1, 5, 10, 100)]
    theirs = ranx_evaluate(Qrels(qrels), ranx_run, names)
    for name in names:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), name


def test_ndcg_by_hand_and_missing_query_scores_zero():
    judged = {"a": 2, "b": 1}
    expected = (1 / np.log2(3)) / (2 + 1 / np.log2(3))  # b at rank 2; ideal a then b
    assert ndcg_at_k(["x", "b"], judged, 10) == pytest.approx(expected)
    assert evaluate({}, {"q": judged})["ndcg@10"] == 0.0


def test_load_qrels_reads_beir_tsv(tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\n")
    assert load_qrels(p) == {"q1": {"d1": 2, "d2": 1}}
    p.write_text("query-id\tcorpus-id\tscore\nq1\td1\tx\n")
    with pytest.raises(ValueError, match="line 2"):
        load_qrels(p)
