"""The one result type that travels through every stage, from first-stage sources to the final ranker, and the
request enums the edges share (light: the gRPC client and the CLI import them without numpy)."""
from __future__ import annotations

import enum
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


class Constraint(enum.StrEnum):
    """How a composed query's named attribute values ("in red") act: filter, boost, or nothing."""

    HARD = "hard"
    SOFT = "soft"
    OFF = "off"


class Stage(enum.StrEnum):
    """The deepest stage a search applies: the fused first stage, + the cross-encoder, + the LightGBM ranker."""

    FIRST = "first"
    CROSS = "cross"
    FULL = "full"
