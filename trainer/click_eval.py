"""Pure evaluation core of the click loop: click labels as graded qrels, composed query vectors, brute-force runs.

Works on numpy arrays and sessions only; the trainer (torch model) and the gate (ClipEncoder) encode.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from vitrine.encoders.base import l2_normalize
from vitrine.ranking.clicklog import ClickSession
from vitrine.ranking.metrics import Qrels, Run, evaluate


@dataclass(frozen=True)
class ClickQuery:
    qid: str
    text: str
    image: str | None   # as logged; callers resolve it against the log's folder


def click_judgments(sessions: Iterable[ClickSession]) -> tuple[list[ClickQuery], Qrels]:
    """Groups sessions by query; an item's grade is how many sessions clicked it (shown or not).

    Queries whose sessions have no clicks carry no label and are left out.
    """
    queries: dict[str, ClickQuery] = {}
    qrels: Qrels = {}
    for s in sessions:
        if not s.clicked:
            continue
        key = s.query_key
        if key not in queries:
            queries[key] = ClickQuery(f"q{len(queries)}", s.text, s.image)
        judged = qrels.setdefault(queries[key].qid, {})
        for doc_id in s.clicked:
            judged[doc_id] = judged.get(doc_id, 0) + 1
    return list(queries.values()), qrels


def compose(text_vecs: np.ndarray | None, image_vecs: np.ndarray | None, text_weight: float) -> np.ndarray:
    """Query vectors (N, D): text alone, image alone, or normalise(image + text_weight * text) for composed queries.

    A row of zeros in either input means that part is absent for that query.
    """
    if text_vecs is None and image_vecs is None:
        raise ValueError("compose needs text vectors, image vectors or both.")
    if text_vecs is None or image_vecs is None:
        return l2_normalize(text_vecs if image_vecs is None else image_vecs)
    has_image = np.abs(image_vecs).sum(1, keepdims=True) > 0  # (N, 1)
    w = np.where(has_image, text_weight, 1.0)
    return l2_normalize(image_vecs + w * text_vecs)


def brute_force_run(xq: np.ndarray, xb: np.ndarray, ids: Sequence[str], k: int,
                    exclude: Sequence[Sequence[str]] | None = None) -> list[list[str]]:
    """Top-k ids by inner product for each query row, best first; `exclude[i]` ids never appear for query i."""
    if len(ids) != len(xb):
        raise ValueError(f"got {len(ids)} ids for {len(xb)} vectors.")
    if len(xb) == 0:
        return [[] for _ in range(len(xq))]
    position = {d: i for i, d in enumerate(ids)}
    out = []
    for start in range(0, len(xq), 1024):
        D = xq[start:start + 1024] @ xb.T  # (Q, N)
        for row, scores in enumerate(D):
            banned = [position[d] for d in (exclude[start + row] if exclude else ()) if d in position]
            if banned:
                scores = scores.copy()
                scores[banned] = -np.inf
            kk = min(k + len(banned), len(ids))
            top = np.argpartition(-scores, kk - 1)[:kk]
            top = top[np.argsort(-scores[top], kind="stable")]
            out.append([ids[i] for i in top if np.isfinite(scores[i])][:k])
    return out


def run_metrics(run: Run, qrels: Qrels, k: int = 10) -> dict[str, float]:
    """recall@k and nDCG@k (ranking.metrics definitions) over the judged queries."""
    scores = evaluate(run, qrels, ks=[k])
    return {f"recall@{k}": scores[f"recall@{k}"], f"ndcg@{k}": scores[f"ndcg@{k}"]}

