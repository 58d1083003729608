"""A tenant's online experiment at serving time: which arm answers (A/B), or both arms team-draft interleaved.

The arm or team of every shown item (an Assignment) is remembered with the search, so Feedback can credit clicks
(server/query_log.py) to the log `vitrine ab report` reads (ranking/experiment_log.py; ranking/experiments.py has
the statistics).
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace

from vitrine.ranking.arms import Arm, ExperimentKind, assign_arm, team_draft
from vitrine.ranking.experiment_log import Assignment
from vitrine.ranking.pipeline import SearchRequest, SearchResult
from vitrine.serving.assemble import Served
from vitrine.serving.config import ExperimentConfig

DEFAULT_K = 10


def run_experiment(config: ExperimentConfig, served: Served, req: SearchRequest,
                   reading: Callable[[], AbstractContextManager], session: str, request_id: str
                   ) -> tuple[SearchResult, Assignment]:
    """Answers `req` for the experiment; returns the result and what Feedback needs to credit clicks."""
    searcher, arm_b = served.searcher, served.arm_b
    if config.kind == ExperimentKind.AB:
        arm = assign_arm(session, config.name, config.split)
        result = (arm_b if arm is Arm.B else searcher).search(req, reading)
        return result, Assignment(config.name, ExperimentKind.AB, arm=arm)
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
    return result, Assignment(config.name, ExperimentKind.INTERLEAVE, teams={i: teams[i] for i in page})
