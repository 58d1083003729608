"""A tenant's online experiment at serving time: which arm answers (A/B), or both arms team-draft interleaved.

The arm or team of every shown item is remembered with the search, so Feedback can credit clicks
(server/query_log.py) to the log `vitrine ab report` reads (ranking/experiments.py has the statistics).
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from vitrine.ranking.experiments import ExperimentKind, assign_arm, team_draft
from vitrine.ranking.pipeline import Searcher, SearchRequest, SearchResult
from vitrine.server.tenants import ExperimentConfig

DEFAULT_K = 10


def run_experiment(config: ExperimentConfig, searcher: Searcher, req: SearchRequest,
                   reading: Callable[[], AbstractContextManager], session: str, request_id: str
                   ) -> tuple[SearchResult, dict[str, Any]]:
    """Answers `req` for the experiment; returns the result and what Feedback needs to credit clicks."""
    arm_b: Searcher = searcher.arm_b
    if config.kind == ExperimentKind.AB:
        arm = assign_arm(session, config.name, config.split)
        result = (arm_b if arm == "b" else searcher).search(req, reading)
        return result, {"experiment": config.name, "kind": "ab", "arm": arm}
    # Interleaving: both arms rank the same first page; team draft picks from each in turn (seeded per request).
    k = (req.k or DEFAULT_K) + req.offset
    both = replace(req, k=k, offset=0)
    a = searcher.search(both, reading)
    b = arm_b.search(both, reading)   # query encodings come from the encoders' cache: the arms share them
    # Seeded by session and query, not request: the same user paging or repeating a search sees one interleaving.
    seed = hashlib.sha256(f"{config.name}:{session}:{req.text}".encode()).hexdigest()
    ids, teams = team_draft([h.id for h in a.hits], [h.id for h in b.hits], k, random.Random(seed))
    by_id = {h.id: h for h in b.hits} | {h.id: h for h in a.hits}
    page = ids[req.offset:req.offset + (req.k or DEFAULT_K)]
    timings = {**{f"b_{s}": ms for s, ms in b.timings_ms.items()}, **a.timings_ms}
    result = replace(a, hits=[by_id[i] for i in page], timings_ms=timings,
                     features={**b.features, **a.features}, contributions={**b.contributions, **a.contributions})
    return result, {"experiment": config.name, "kind": "interleave", "teams": {i: teams[i] for i in page}}
