"""What a search asks (SearchRequest) and what it gets back (SearchResult), and the two errors a request can meet.

ranking/pipeline.py answers them (and still exports these names, where the doors have always imported them from).
"""
from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from vitrine.ranking.fusion import FusionMethod
from vitrine.ranking.types import Hit, Stage


class InvalidRequest(ValueError):
    """A request field is wrong; `field` names it so the gRPC edge can say which."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


class Unsupported(RuntimeError):
    """The request is valid but this bundle cannot answer it (e.g. an image query without a CLIP index)."""


def parse_enum(kind: type[enum.StrEnum], value: str, field_name: str) -> enum.StrEnum:
    """A request's string as the enum, or InvalidRequest naming the field and the allowed values."""
    try:
        return kind(value)
    except ValueError:
        raise InvalidRequest(field_name, f"must be one of {', '.join(m.value for m in kind)}, got {value!r}.") from None


@dataclass(frozen=True)
class SearchRequest:
    text: str = ""
    image: bytes = b""
    filters: Mapping[str, str] = field(default_factory=dict)
    price_min: float | None = None
    price_max: float | None = None
    k: int = 0
    offset: int = 0
    exclude_ids: Sequence[str] = ()
    fusion: FusionMethod | None = None
    weights: Mapping[str, float] = field(default_factory=dict)
    sources: Sequence[str] = ()
    explain: bool = False
    constraint: str = ""                       # composed queries; "" = config default
    composed_text_weight: float | None = None  # composed queries; None = config default
    stages: str = ""                           # a Stage value; "" = config default
    rerank_depth: int | None = None            # candidates the second stage re-scores; None = config default
    log_features: bool = False                 # compute second-stage features even without a ranker


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    total_candidates: int
    timings_ms: dict[str, float]
    bundle_version: str
    constraints: Mapping[str, str] = field(default_factory=dict)
    # Image and composed queries: attribute -> (value, probability) predicted from the photo and used as a soft boost.
    predicted: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    mode: str = "text"
    stages: str = Stage.FIRST                                    # the deepest stage that actually ran
    # Per re-ranked candidate id: its feature row (ranking.features.FEATURES order) when computed, and with
    # `explain` and a ranker, each feature's contribution to the ranker score (LightGBM pred_contrib).
    features: Mapping[str, np.ndarray] = field(default_factory=dict)
    contributions: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # Sources the request would have used but a rule left out, each with the reason a person can read (explanations).
    dropped: Mapping[str, str] = field(default_factory=dict)
    # Typo tolerance: query words no item contains and no model knows, each with the word the dense encoders read
    # instead (BM25 also searches it when the catalog uses it).
    corrected: Mapping[str, str] = field(default_factory=dict)
