"""What a search asks (SearchRequest) and what it gets back (SearchResult), and the two errors a request can meet.

ranking/pipeline.py answers them (and still exports these names, where the doors have always imported them from).
"""
from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitrine.indexer.columns import FieldFilter
from vitrine.ranking.facets import Facet, FacetSpec
from vitrine.ranking.fusion import FusionMethod
from vitrine.ranking.rules import Rules
from vitrine.ranking.types import Constraint, Hit, Stage


SOURCES = ("bm25", "text", "clip_text", "clip_image")


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
    where: Sequence[FieldFilter] = ()          # any of / none of / ranges / presence, AND with filters and price
    facets: Sequence[FacetSpec] = ()
    sort: str = ""                             # "" or "relevance" = by score; else a numeric field
    descending: bool = False
    highlight: bool = False
    rules: Rules = Rules()                     # the request's own merchandising rules
    no_rules: bool = False                     # leave out the configured [search.rules]
    like_id: str = ""                          # more like this item: its stored vectors are the query

    @property
    def browse(self) -> bool:
        """No text, photo or item to match: the (filtered) catalog in the requested order."""
        return not self.text.strip() and not self.image and not self.like_id

    @property
    def sorted_by(self) -> str:
        return "" if self.sort in ("", "relevance") else self.sort


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
    facets: Sequence[Facet] = ()
    facet_scope: str = ""                      # "candidates" or "catalog"; "" without facets
    # With highlight: id -> the fields' snippets (indexer/snippets.py), an empty list for a hit no query word matched.
    highlights: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    rules: Mapping[str, Sequence[str]] = field(default_factory=dict)   # id -> the merchandising rules that moved it
    sort_values: Mapping[str, float] = field(default_factory=dict)     # with a sort: id -> the value sorted on


def validate(req: SearchRequest, cfg: Any, stages: Sequence[str], max_rerank_depth: int) -> int:
    """Checks a request against a [search] config (SearchConfig) and the served stages; returns k. InvalidRequest
    names the first wrong field."""
    if not req.text.strip() and not req.image and not req.like_id and not (
            req.filters or req.where or req.price_min is not None or req.price_max is not None or req.facets
            or req.sorted_by):
        raise InvalidRequest("text", "the query is empty; give text, an image, an item (like_id), or for a browse "
                                     "filters, facets or a sort.")
    if len(req.text) > cfg.max_text_chars:
        raise InvalidRequest("text", f"is {len(req.text)} characters; the limit is {cfg.max_text_chars}.")
    if len(req.image) > cfg.max_image_bytes:
        raise InvalidRequest("image", f"is {len(req.image)} bytes; the limit is {cfg.max_image_bytes}.")
    k = req.k or cfg.default_k
    if k < 0 or k > cfg.max_k:
        raise InvalidRequest("k", f"must be between 1 and {cfg.max_k}, got {req.k}.")
    if req.offset < 0 or req.offset > cfg.max_offset:
        raise InvalidRequest("offset", f"must be between 0 and {cfg.max_offset}, got {req.offset}.")
    for name, value in (("price.min", req.price_min), ("price.max", req.price_max)):
        if value is not None and not np.isfinite(value):
            raise InvalidRequest(name, f"must be a finite number, got {value}.")
    if req.price_min is not None and req.price_max is not None and req.price_min > req.price_max:
        raise InvalidRequest("price", f"min {req.price_min} is greater than max {req.price_max}.")
    if req.constraint:
        parse_enum(Constraint, req.constraint, "constraint")
    if req.stages:
        stage = parse_enum(Stage, req.stages, "stages")
        if stage not in stages:
            raise InvalidRequest("stages", f"stage {stage.value!r} needs a "
                                           f"{'cross-encoder' if stage is Stage.CROSS else 'ranker'} and this server has "
                                           f"none loaded; available: {', '.join(stages)}.")
    if req.rerank_depth is not None and not 0 <= req.rerank_depth <= max_rerank_depth:
        raise InvalidRequest("rerank_depth", f"must be between 0 and {max_rerank_depth}, got {req.rerank_depth}.")
    if req.composed_text_weight is not None and not (np.isfinite(req.composed_text_weight) and req.composed_text_weight >= 0):
        raise InvalidRequest("composed_text_weight", f"must be a non-negative finite number, got {req.composed_text_weight}.")
    for name, w in req.weights.items():
        if name not in SOURCES:
            raise InvalidRequest("weights", f"unknown source {name!r}; sources are {', '.join(SOURCES)}.")
        if not np.isfinite(w) or w < 0:
            raise InvalidRequest(f"weights.{name}", f"must be a non-negative finite number, got {w}.")
    if len(req.exclude_ids) > cfg.max_k:
        raise InvalidRequest("exclude_ids", f"has {len(req.exclude_ids)} ids; the limit is {cfg.max_k}.")
    _validate_rules(req.rules, cfg.max_k)
    return k


def _validate_rules(rules: Rules, max_ids: int) -> None:
    for n, b in enumerate(rules.boost):
        if not b.field.strip():
            raise InvalidRequest(f"boosts[{n}].field", "is empty; name a field (category, or an attribute).")
        if not (np.isfinite(b.factor) and b.factor >= 0):
            raise InvalidRequest(f"boosts[{n}].factor", f"must be a non-negative finite number, got {b.factor}.")
        if not np.isfinite(b.add):
            raise InvalidRequest(f"boosts[{n}].add", f"must be a finite number, got {b.add}.")
    for n, p in enumerate(rules.pin):
        if not p.id or p.position < 1:
            raise InvalidRequest(f"pins[{n}]", f"needs an id and a position from 1, got {p.id!r} at {p.position}.")
    if rules.min_score is not None and not np.isfinite(rules.min_score):
        raise InvalidRequest("min_score", f"must be a finite number, got {rules.min_score}.")
    if len(rules.pin) + len(rules.hide) > max_ids:
        raise InvalidRequest("pins", f"pins and hide_ids name {len(rules.pin) + len(rules.hide)} ids; the limit is {max_ids}.")
