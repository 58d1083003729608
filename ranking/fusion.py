"""Fusion of ranked lists from several first-stage sources: RRF and weighted (min-max or max) normalised scores.

Pure functions over plain lists, so they are tested exactly and need no torch.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

from vitrine.ranking.types import Hit, SourceHit

Ranked = Sequence[tuple[str, float]]  # (id, raw score), best first


class FusionMethod(enum.StrEnum):
    RRF = "rrf"
    WEIGHTED = "weighted"
    WEIGHTED_MAX = "weighted_max"


def rrf(lists: Mapping[str, Ranked], weights: Mapping[str, float] | None = None, k: int = 60) -> list[Hit]:
    """Reciprocal rank fusion: score(d) = sum_s w_s / (k + rank_s(d))."""
    fused: dict[str, float] = {}
    for source, ranked in lists.items():
        w = 1.0 if weights is None else weights.get(source, 1.0)
        for rank, (doc_id, _) in enumerate(ranked, start=1):
            fused[doc_id] = fused.get(doc_id, 0.0) + w / (k + rank)
    return _hits(lists, fused)


def weighted(lists: Mapping[str, Ranked], weights: Mapping[str, float] | None = None) -> list[Hit]:
    """Convex combination of per-query min-max normalised scores; a doc absent from a list gets 0 there.

    Unlike RRF it keeps how far apart scores are, so one confident source can outvote a noisy one.
    """
    fused: dict[str, float] = {}
    for source, ranked in lists.items():
        w = 1.0 if weights is None else weights.get(source, 1.0)
        if not ranked or w == 0:
            continue
        scores = [s for _, s in ranked]
        lo, hi = min(scores), max(scores)
        span = hi - lo
        for doc_id, s in ranked:
            norm = (s - lo) / span if span > 0 else 1.0
            fused[doc_id] = fused.get(doc_id, 0.0) + w * norm
    for source, ranked in lists.items():  # docs only in zero-weight lists still appear, last
        for doc_id, _ in ranked:
            fused.setdefault(doc_id, 0.0)
    return _hits(lists, fused)


def weighted_max(lists: Mapping[str, Ranked], weights: Mapping[str, float] | None = None) -> list[Hit]:
    """Convex combination of per-query max-normalised scores: norm(d) = max(s_d, 0) / max_s; absent docs get 0.

    Unlike min-max, a list's weakest candidate keeps most of its score instead of dropping to 0, so
    the normalised value reflects how close a doc is to the source's best rather than where the
    candidate cut-off happened to fall. A list whose best score is <= 0 contributes nothing.
    Measured by bench/tune_first_stage.py: best of RRF, min-max, z-score and max on scifact + fashion.
    """
    fused: dict[str, float] = {}
    for source, ranked in lists.items():
        w = 1.0 if weights is None else weights.get(source, 1.0)
        if not ranked or w == 0:
            continue
        hi = max(s for _, s in ranked)
        if hi <= 0:
            continue
        for doc_id, s in ranked:
            fused[doc_id] = fused.get(doc_id, 0.0) + w * max(s, 0.0) / hi
    for source, ranked in lists.items():  # docs only in zero-weight or non-positive lists still appear, last
        for doc_id, _ in ranked:
            fused.setdefault(doc_id, 0.0)
    return _hits(lists, fused)


def fuse(lists: Mapping[str, Ranked], method: FusionMethod, weights: Mapping[str, float] | None = None,
         rrf_k: int = 60) -> list[Hit]:
    if method is FusionMethod.RRF:
        return rrf(lists, weights, rrf_k)
    if method is FusionMethod.WEIGHTED_MAX:
        return weighted_max(lists, weights)
    return weighted(lists, weights)


def _hits(lists: Mapping[str, Ranked], fused: dict[str, float]) -> list[Hit]:
    per_doc: dict[str, dict[str, SourceHit]] = {}
    for source, ranked in lists.items():
        for rank, (doc_id, s) in enumerate(ranked, start=1):
            per_doc.setdefault(doc_id, {})[source] = SourceHit(score=float(s), rank=rank)
    # Ties break by id so results are deterministic across runs and replicas.
    order = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
    return [Hit(id=doc_id, score=score, scores_by_source=per_doc.get(doc_id, {})) for doc_id, score in order]
