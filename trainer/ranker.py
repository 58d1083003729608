"""Feature collection and labels for the LightGBM ranker: in-process through the server's own Searcher, or from
the feature log the server writes; labels from graded qrels or from a click-label table."""
from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vitrine.indexer.jsonl import read_jsonl
from vitrine.ranking.features import SCHEMA_VERSION, features_from_dict
from vitrine.ranking.pipeline import Searcher, SearchRequest


@dataclass(frozen=True)
class QueryFeatures:
    qid: str
    ids: list[str]          # candidates in the order the features were computed (served order)
    X: np.ndarray           # (len(ids), F)


def collect_features(searcher: Searcher, queries: Sequence[Mapping], depth: int, progress: bool = True) -> Iterator[QueryFeatures]:
    """Runs each query through the same pipeline the server runs, up to the cross-encoder, and yields its features."""
    stages = "cross" if searcher.reranker is not None else "first"
    for q in tqdm(queries, desc="features", disable=not progress, unit="query"):
        res = searcher.search(SearchRequest(text=q.get("text", ""), k=depth, filters=q.get("filters") or {},
                                            exclude_ids=q.get("exclude_ids") or [], stages=stages, rerank_depth=depth,
                                            log_features=True))
        ids = [h.id for h in res.hits if h.id in res.features]
        if ids:
            yield QueryFeatures(q["qid"], ids, np.stack([res.features[i] for i in ids]))


def read_feature_log(path: str | Path, qid_by_text: Mapping[str, str]) -> tuple[list[QueryFeatures], int]:
    """Feature-log lines whose query text is a known query; returns them and how many lines were skipped."""

    def parse(rec: dict) -> QueryFeatures | None:
        if rec.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"not a feature-log record: schema version {rec.get('schema_version')}, expected {SCHEMA_VERSION}")
        qid = qid_by_text.get(" ".join(rec["query"]["text"].split()))
        cands = rec["candidates"]
        if qid is None or not cands:
            return None
        return QueryFeatures(qid, [c["id"] for c in cands], np.stack([features_from_dict(c["features"]) for c in cands]))

    rows = read_jsonl(path, parse)
    return [r for r in rows if r is not None], sum(r is None for r in rows)


def label_with_qrels(groups: Sequence[QueryFeatures], qrels: Mapping[str, Mapping[str, int]]
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(X, y, qids) for queries with judgments; unjudged candidates count as grade 0."""
    X, y, qids = [], [], []
    for g in groups:
        judged = qrels.get(g.qid)
        if not judged:
            continue
        X.append(g.X)
        y.extend(max(judged.get(i, 0), 0) for i in g.ids)
        qids.extend([g.qid] * len(g.ids))
    if not X:
        raise ValueError("no query with features has judgments; check that --queries and --qrels use the same ids.")
    return np.concatenate(X), np.asarray(y, dtype=np.int32), qids


def label_with_clicks(groups: Sequence[QueryFeatures], clicks: Mapping[str, Mapping[str, tuple[int, int]]]
                      ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """(X, y, qids, positions) from a click-label table: qid -> doc id -> (clicked 0/1, 1-based position shown).

    Candidates the user was never shown are left out: a skip is only evidence where the item was seen.
    """
    X, y, qids, pos = [], [], [], []
    for g in groups:
        table = clicks.get(g.qid)
        if not table:
            continue
        keep = [j for j, i in enumerate(g.ids) if i in table]
        if not keep:
            continue
        X.append(g.X[keep])
        y.extend(table[g.ids[j]][0] for j in keep)
        pos.extend(table[g.ids[j]][1] - 1 for j in keep)
        qids.extend([g.qid] * len(keep))
    if not X:
        raise ValueError("no query with features has click labels; check that the click log's queries match --queries.")
    return np.concatenate(X), np.asarray(y, dtype=np.int32), qids, np.asarray(pos, dtype=np.int32)


def reranker_seen_qids(reranker_dir: str | Path | None) -> set[str]:
    """Queries a Vitrine cross-encoder trained on: its scores on them are over-confident, so the ranker skips them."""
    from vitrine.ranking.rerank import training_meta

    return set(training_meta(str(reranker_dir)).get("train_qids", [])) if reranker_dir else set()


def click_label_table(path: str | Path, queries: Sequence[Mapping]) -> tuple[dict[str, dict[str, tuple[int, int]]], list[dict]]:
    """Per query of `queries` (joined by text): doc id -> (clicked in any session 0/1, best position shown).

    Returns the table and the queries it covers. Text-only sessions are used; malformed lines are counted and
    reported by the reader, never fatal.
    """
    from vitrine.ranking.clicklog import ClickLogSummary, iter_click_log

    qid_by_text = {" ".join(q.get("text", "").split()): q["qid"] for q in queries if q.get("text")}
    table: dict[str, dict[str, tuple[int, int]]] = {}
    summary = ClickLogSummary()
    for s in iter_click_log(path, summary):
        qid = qid_by_text.get(" ".join(s.text.split()))
        if qid is None or s.image:
            continue
        clicked = set(s.clicked)
        row = table.setdefault(qid, {})
        for pos, doc in enumerate(s.shown, start=1):
            was, best = row.get(doc, (0, pos))
            row[doc] = (max(was, int(doc in clicked)), min(best, pos))
    if summary.malformed:
        print(f"click log {path}: {summary}", file=sys.stderr)
    return table, [q for q in queries if q["qid"] in table]
