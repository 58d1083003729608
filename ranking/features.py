"""Learning-to-rank features for (query, candidate) pairs: one function used online and offline.

The server computes these for the candidates it re-ranks (and logs them when asked); the ranker trainer gets
them by running the same Searcher in-process, so training and serving cannot drift apart.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from vitrine.indexer.catalog import Item
from vitrine.ranking.types import Hit

SCHEMA_VERSION = 1
FIRST_STAGE_SOURCES = ("bm25", "text", "clip_text", "clip_image")
MODES = ("text", "image", "composed")

FEATURES: tuple[str, ...] = (
    *(f"{s}_{kind}" for s in FIRST_STAGE_SOURCES for kind in ("score", "rel", "rank")),
    "n_sources", "fused_score", "fused_rank",
    "cross_score", "cross_rel", "cross_rank",
    "price", "log_price", "title_words", "doc_words", "query_words",
    "query_title_overlap", "query_doc_overlap", "query_attr_matches", "query_attr_named", "filter_count", "mode",
)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class QueryContext:
    """What the features need to know about the query besides the candidates."""

    text: str
    mode: str = "text"                                          # text | image | composed
    filters: Mapping[str, str] = field(default_factory=dict)
    named_values: Mapping[str, str] = field(default_factory=dict)   # attribute values the text names (docstore)
    depth: int = 100                                            # first-stage depth; a missing rank counts as depth + 1


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def candidate_features(query: QueryContext, hits: Sequence[Hit], items: Sequence[Item | None]) -> np.ndarray:
    """The feature matrix of `hits` (in their current order) for `query`; NaN where a signal is absent. (N, F)

    `hits` carry first-stage (and, once re-scored, "cross") SourceHits; `items` are their stored fields.
    """
    if len(hits) != len(items):
        raise ValueError(f"got {len(hits)} hits but {len(items)} items.")
    X = np.full((len(hits), len(FEATURES)), np.nan, dtype=np.float64)
    col = {name: j for j, name in enumerate(FEATURES)}
    best = {s: max((h.scores_by_source[s].score for h in hits if s in h.scores_by_source), default=np.nan)
            for s in (*FIRST_STAGE_SOURCES, "cross")}
    qwords = set(words(query.text))
    for i, (hit, item) in enumerate(zip(hits, items)):
        row = X[i]
        for s in (*FIRST_STAGE_SOURCES, "cross"):
            sh = hit.scores_by_source.get(s)
            row[col[f"{s}_rank"]] = sh.rank if sh is not None else query.depth + 1
            if sh is not None:
                row[col[f"{s}_score"]] = sh.score
                # BM25 scores are not comparable across queries; the share of the query's best score is.
                row[col[f"{s}_rel"]] = sh.score / best[s] if best[s] and best[s] > 0 else np.nan
        row[col["n_sources"]] = sum(1 for s in FIRST_STAGE_SOURCES if s in hit.scores_by_source)
        row[col["fused_score"]] = hit.scores_by_source["fused"].score if "fused" in hit.scores_by_source else hit.score
        row[col["fused_rank"]] = hit.scores_by_source["fused"].rank if "fused" in hit.scores_by_source else i + 1
        row[col["query_words"]] = len(qwords)
        row[col["query_attr_named"]] = len(query.named_values)
        row[col["filter_count"]] = len(query.filters)
        row[col["mode"]] = MODES.index(query.mode) if query.mode in MODES else np.nan
        if item is None:
            continue
        if item.price is not None and math.isfinite(item.price):
            row[col["price"]] = item.price
            row[col["log_price"]] = math.log1p(max(item.price, 0.0))
        title, doc = set(words(item.title)), set(words(" ".join((item.title, item.description, *map(str, item.attributes.values())))))
        row[col["title_words"]] = len(words(item.title))
        row[col["doc_words"]] = len(words(item.description)) + row[col["title_words"]]
        if qwords:
            row[col["query_title_overlap"]] = len(qwords & title) / len(qwords)
            row[col["query_doc_overlap"]] = len(qwords & doc) / len(qwords)
        attrs = {k.casefold(): " ".join(words(str(v))) for k, v in item.attributes.items()}
        row[col["query_attr_matches"]] = sum(1 for f, v in query.named_values.items() if attrs.get(f) == v)
    return X


def features_to_dict(x: np.ndarray) -> dict[str, float | None]:
    """One feature row as a JSON-safe mapping (NaN becomes None)."""
    return {name: (None if not math.isfinite(v) else float(v)) for name, v in zip(FEATURES, x)}


def features_from_dict(d: Mapping[str, float | None], names: Sequence[str] = FEATURES) -> np.ndarray:
    """The inverse of features_to_dict; a feature a log lacks (an older schema) reads as NaN. (F,)"""
    return np.array([np.nan if d.get(n) is None else float(d[n]) for n in names], dtype=np.float64)
