"""Retrieval metrics over runs and graded qrels (BEIR layout), matching trec_eval / ranx definitions.

nDCG uses gain = grade and log2 discounts (trec_eval's ndcg_cut); MRR@k is the reciprocal rank of the
first relevant hit within k; Recall@k is relevant retrieved within k over all relevant.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.indexer.jsonl import read_jsonl

Qrels = dict[str, dict[str, int]]   # qid -> doc_id -> grade
Run = dict[str, list[str]]          # qid -> ranked doc ids, best first


def load_qrels(path: str | Path) -> Qrels:
    """Reads a BEIR TSV (header, then query-id, corpus-id, grade); grades <= 0 are kept but never relevant."""
    qrels: Qrels = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        for lineno, row in enumerate(reader, start=1):
            if lineno == 1 and row and not row[-1].lstrip("-").isdigit():
                continue  # header
            if not row:
                continue
            if len(row) < 3:
                raise ValueError(f"{path}: line {lineno}: expected query-id, corpus-id, grade; got {row!r}")
            try:
                grade = int(row[2])
            except ValueError:
                raise ValueError(f"{path}: line {lineno}: grade {row[2]!r} is not an integer") from None
            qrels.setdefault(row[0], {})[row[1]] = grade
    return qrels


def query_from_dict(q: Any) -> dict:
    """Validates one query line (`qid` or BEIR's `_id`, `text`?, `image`?, `exclude_ids`?, `filters`?)."""
    if isinstance(q, dict) and "qid" not in q and "_id" in q:
        q["qid"] = q.pop("_id")  # BEIR queries.jsonl
    if not isinstance(q, dict) or "qid" not in q:
        raise ValueError("a query needs a 'qid'")
    if not q.get("text") and not q.get("image"):
        raise ValueError(f"query {q['qid']!r} has neither 'text' nor 'image'")
    q["qid"] = str(q["qid"])
    return q


def load_queries(path: str | Path) -> list[dict]:
    """Reads query lines, validating each; a bad line raises ValueError naming the file and line."""
    return read_jsonl(path, query_from_dict)


def dcg(gains: Sequence[float]) -> float:
    return float(sum(g / math.log2(i + 2) for i, g in enumerate(gains)))


def ndcg_at_k(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    gains = [max(judged.get(d, 0), 0) for d in ranked[:k]]
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = dcg(ideal)
    return dcg(gains) / idcg if idcg > 0 else 0.0


def mrr_at_k(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if judged.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in judged.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


METRICS = {"ndcg": ndcg_at_k, "mrr": mrr_at_k, "recall": recall_at_k}
DEFAULT_KS = (1, 5, 10, 100)


def evaluate(run: Run, qrels: Qrels, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean of each metric@k over the queries that have at least one relevant judgment.

    A judged query missing from the run scores 0, as in trec_eval with -c.
    """
    ks = list(ks)
    qids = [q for q, judged in qrels.items() if any(g > 0 for g in judged.values())]
    out: dict[str, float] = {}
    for name, fn in METRICS.items():
        for k in ks:
            vals = [fn(run.get(q, []), qrels[q], k) for q in qids]
            out[f"{name}@{k}"] = float(np.mean(vals)) if vals else 0.0
    return out


def per_query(run: Run, qrels: Qrels, metric: str = "ndcg", k: int = 10) -> dict[str, float]:
    fn = METRICS[metric]
    return {q: fn(run.get(q, []), judged, k) for q, judged in qrels.items() if any(g > 0 for g in judged.values())}
