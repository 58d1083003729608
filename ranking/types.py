"""The one result type that travels through every stage, from first-stage sources to the final ranker."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class SourceHit:
    """One source's opinion of one doc: its raw score and 1-based rank in that source's list."""

    score: float
    rank: int


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    scores_by_source: Mapping[str, SourceHit] = field(default_factory=dict)
