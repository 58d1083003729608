"""Merchandising rules: boost or bury by field value, pin ids at positions, hide ids, a minimum score.

Where they act, and why:
- Boosts and the minimum score act on the fused first-stage score, after fusion and before the second stage. The fused
  score is on one scale per fusion method and never negative, so a factor means the same on every query ("x2" doubles
  an item's standing, "x0.5" buries it), which an additive bonus cannot promise (it is also offered, documented as
  being in fused-score units). Acting before the second stage lets a bury keep an item out of the window the
  cross-encoder and ranker re-score, and the cross-encoder's blend keeps the boosted fused score as its first part.
  A LightGBM ranker re-scores its window from features and may reorder boosted items there: a rule that must hold
  whatever the models say is a pin or a hide.
- Pins and hides act last, after every stage and any sort: a pinned id is exactly where the rule says.
A hit's `rules` lists every rule that moved it, and its explanation says so.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vitrine.indexer.columns import CATEGORY, Columns, norm
from vitrine.ranking.types import Hit, SourceHit
from vitrine.serving.schema import check, config_from_dict


@dataclass(frozen=True)
class BoostRule:
    field: str
    value: str
    factor: float = 1.0   # multiplies the fused score: 2 doubles, 0.5 buries
    add: float = 0.0      # then added, in fused-score units
    query: str = ""       # a configured rule: only for this query (case and spaces ignored); "" = every query

    def describe(self) -> str:
        parts = ([f"x{self.factor:g}"] if self.factor != 1 else []) + ([f"{self.add:+g}"] if self.add else [])
        verb = "bury" if self.factor < 1 or self.add < 0 else "boost"
        return f"{verb} {self.field}={self.value} {' '.join(parts)}".strip()


@dataclass(frozen=True)
class PinRule:
    id: str
    position: int         # 1-based
    query: str = ""       # a configured pin: only for this query; a request's pins are for that request

    def describe(self) -> str:
        return f"pinned at {self.position}"


@dataclass(frozen=True)
class Rules:
    """[search.rules] of vitrine.toml or a tenant's toml, and a request's own rules (merged on top)."""

    boost: tuple[BoostRule, ...] = ()
    pin: tuple[PinRule, ...] = ()
    hide: tuple[str, ...] = ()
    min_score: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rules:
        check(isinstance(d, Mapping), "search.rules", "a table", d)
        d = dict(d)
        boosts = d.pop("boost", [])
        pins = d.pop("pin", [])
        check(isinstance(boosts, list), "search.rules.boost", "a list of tables ([[search.rules.boost]])", boosts)
        check(isinstance(pins, list), "search.rules.pin", "a list of tables ([[search.rules.pin]])", pins)
        cfg = config_from_dict(cls, d, "search.rules")
        boost = tuple(config_from_dict(BoostRule, b, f"search.rules.boost[{n}]") for n, b in enumerate(boosts))
        pin = tuple(config_from_dict(PinRule, p, f"search.rules.pin[{n}]") for n, p in enumerate(pins))
        out = replace(cfg, boost=boost, pin=pin)
        check_rules(out, "search.rules")
        return out

    def for_query(self, text: str) -> Rules:
        """The configured rules that apply to a query: those for every query and those written for this one."""
        q = norm(text)
        return replace(self, boost=tuple(b for b in self.boost if not b.query or norm(b.query) == q),
                       pin=tuple(p for p in self.pin if not p.query or norm(p.query) == q))

    def then(self, other: Rules) -> Rules:
        """These rules and `other`'s (a request's): boosts both apply; a pin of `other` wins its id; hides join;
        `other`'s minimum score wins when given."""
        pinned = {p.id for p in other.pin}
        return Rules(boost=self.boost + other.boost, pin=tuple(p for p in self.pin if p.id not in pinned) + other.pin,
                     hide=tuple(dict.fromkeys(self.hide + other.hide)),
                     min_score=other.min_score if other.min_score is not None else self.min_score)

    def __bool__(self) -> bool:
        return bool(self.boost or self.pin or self.hide or self.min_score is not None)


def check_rules(rules: Rules, where: str) -> None:
    """Raises ValueError("Field '<where>.boost[0].factor' must be …") for values no rule can mean."""
    for n, b in enumerate(rules.boost):
        check(bool(b.field.strip()), f"{where}.boost[{n}].field", "a field name", b.field)
        check(math.isfinite(b.factor) and b.factor >= 0, f"{where}.boost[{n}].factor", "a non-negative number", b.factor)
        check(math.isfinite(b.add), f"{where}.boost[{n}].add", "a finite number", b.add)
    for n, p in enumerate(rules.pin):
        check(bool(p.id), f"{where}.pin[{n}].id", "an item id", p.id)
        check(p.position >= 1, f"{where}.pin[{n}].position", "a position from 1", p.position)
    check(rules.min_score is None or math.isfinite(rules.min_score), f"{where}.min_score", "a finite number",
          rules.min_score)


def apply_boosts(hits: Sequence[Hit], boosts: Sequence[BoostRule], columns: Columns, docno_by_id: Mapping[str, int],
                 moved: dict[str, list[str]]) -> list[Hit]:
    """Each boost whose field has its value (a category also matches the paths below it) multiplies, then adds to,
    the fused score; hits re-sorted. Records each rule that changed a hit in `moved`."""
    if not boosts or not hits:
        return list(hits)
    docnos = np.array([docno_by_id.get(h.id, -1) for h in hits], dtype=np.int64)
    factor = np.ones(len(hits))
    add = np.zeros(len(hits))
    for rule in boosts:
        col = columns.by_field.get(rule.field.strip().casefold())
        if col is None:
            continue
        match = col.matching([rule.value], prefix=rule.field.strip().casefold() == CATEGORY)[np.maximum(docnos, 0)]
        match &= docnos >= 0
        factor[match] *= rule.factor
        add[match] += rule.add
        for i in np.flatnonzero(match):
            moved.setdefault(hits[i].id, []).append(rule.describe())
    out = [Hit(h.id, h.score * f + a, {**h.scores_by_source, "rules": SourceHit(h.score * f + a - h.score, 0)})
           if f != 1 or a else h for h, f, a in zip(hits, factor, add)]
    return sorted(out, key=lambda h: (-h.score, h.id))


def apply_pins(hits: list[Hit], pins: Sequence[PinRule], passes: Mapping[str, bool], moved: dict[str, list[str]]
               ) -> list[Hit]:
    """Moves (or brings in) each pinned id to its position; `passes[id]` says whether a pinned id exists and passes
    the request's filters (one that does not is not shown)."""
    first = {p.id: p for p in reversed(pins)}   # an id pinned twice keeps its first pin
    pinned = [p for p in sorted(first.values(), key=lambda p: p.position) if passes.get(p.id)]
    if not pinned:
        return hits
    ids = {p.id for p in pinned}
    by_id = {h.id: h for h in hits if h.id in ids}
    rest = [h for h in hits if h.id not in ids]
    for p in pinned:
        hit = by_id.get(p.id) or Hit(p.id, 0.0, {})
        rest.insert(min(p.position - 1, len(rest)), hit)
        moved.setdefault(p.id, []).append(p.describe())
    return rest
