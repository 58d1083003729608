"""What a shop's result page needs after ranking: the sort, pins, facets and highlights; and the browse, a filtered
catalog with no query, which needs nothing else.

The pipeline (ranking/pipeline.py) ranks; this module arranges a ranked list for the page. Everything here reads the
docstore's columns under the live index's read lock, which the caller holds.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from vitrine.indexer.bundle import Bundle
from vitrine.indexer.snippets import highlights
from vitrine.ranking.facets import Facet, check_facets, count_facet, selected_values, sort_column, sort_order
from vitrine.ranking.request import InvalidRequest, SearchRequest
from vitrine.ranking.rules import Rules, apply_pins
from vitrine.ranking.types import Hit

CANDIDATES, CATALOG = "candidates", "catalog"


@dataclass(frozen=True)
class Arranged:
    hits: list[Hit]                 # the whole ordered list; the caller paginates
    facets: tuple[Facet, ...]
    sort_values: dict[str, float]
    highlights: dict[str, list]


def filtered_fields(req: SearchRequest) -> set[str]:
    """Fields a request restricts (exact filters, where, price): the ones whose facets are counted without them."""
    out = {f.casefold() for f in req.filters} | {w.field.strip().casefold() for w in req.where}
    return out | ({"price"} if req.price_min is not None or req.price_max is not None else set())


def without_field(req: SearchRequest, field: str) -> SearchRequest:
    """The request with every restriction on `field` left out (a disjunctive facet's set)."""
    price = field == "price"
    return replace(req, filters={k: v for k, v in req.filters.items() if k.casefold() != field},
                   where=tuple(w for w in req.where if w.field.strip().casefold() != field),
                   price_min=None if price else req.price_min, price_max=None if price else req.price_max)


def hit_docnos(bundle: Bundle, hits: Sequence[Hit]) -> np.ndarray:
    by_id = bundle.docstore.docno_by_id
    return np.array([d for d in (by_id.get(h.id) for h in hits) if d is not None], dtype=np.int64)


def count_facets(bundle: Bundle, req: SearchRequest, docnos: np.ndarray,
                 docnos_without: Callable[[str], np.ndarray]) -> tuple[Facet, ...]:
    """Each requested facet over `docnos`, or over `docnos_without(field)` for a field the request filters on."""
    columns = bundle.docstore.columns
    filtered = filtered_fields(req)
    conditions = bundle.docstore.conditions(req.filters, req.price_min, req.price_max, req.where)
    out = []
    for spec in req.facets:
        field = spec.field.strip().casefold()
        disjunctive = field in filtered
        counted = docnos_without(field) if disjunctive else docnos
        out.append(count_facet(columns.by_field[field], spec, counted, selected_values(field, conditions), disjunctive))
    return tuple(out)


def check_shop_fields(bundle: Bundle, req: SearchRequest) -> None:
    """Facet, sort and boost fields must exist (and be numeric to sort), before any model runs. (A configured boost
    may name a field no item has yet: it boosts nothing.)"""
    columns = bundle.docstore.columns
    check_facets(columns, req.facets)
    for n, rule in enumerate(req.rules.boost):
        columns.column(rule.field, f"boosts[{n}].field")
    if req.sorted_by:
        sort_column(columns, req.sorted_by)


def needs_arranging(req: SearchRequest, rules: Rules) -> bool:
    """Whether a ranked list needs anything of arrange (a sort, facets, pins, highlights)."""
    return bool(req.sorted_by or req.facets or rules.pin or req.highlight)


def arrange(bundle: Bundle, req: SearchRequest, ranked: list[Hit], rules: Rules, moved: dict[str, list[str]],
            docnos_without: Callable[[str], np.ndarray], fixes: Mapping[str, tuple[str, int]] | None = None) -> Arranged:
    """Sort, pins, facets over the candidates, and highlights of the page's hits (`req.k` from `req.offset`)."""
    if not needs_arranging(req, rules):
        return Arranged(ranked, (), {}, {})
    docstore = bundle.docstore
    docnos = hit_docnos(bundle, ranked)
    values: dict[str, float] = {}
    if req.sorted_by and ranked:
        relevance = np.array([h.score for h in ranked if h.id in docstore.docno_by_id])
        kept = [h for h in ranked if h.id in docstore.docno_by_id]
        order = sort_order(docstore.columns, req.sorted_by, req.descending, docnos, relevance)
        ranked, docnos = [kept[i] for i in order], docnos[order]
    facets = count_facets(bundle, req, docnos, docnos_without) if req.facets else ()
    if rules.pin:
        allowed = docstore.allowed(req.filters, req.price_min, req.price_max, req.where)
        hidden = set(rules.hide) | set(req.exclude_ids)
        ok = {}
        for pin in rules.pin:
            d = docstore.docno_by_id.get(pin.id)
            ok[pin.id] = d is not None and pin.id not in hidden and (allowed is None or bool(np.isin(d, allowed)))
        ranked = apply_pins(ranked, rules.pin, ok, moved)
    if req.sorted_by:
        values = sort_values(bundle, req.sorted_by, ranked)
    page = ranked[req.offset:req.offset + req.k]
    snippets = {}
    if req.highlight and req.text.strip():
        items = [it for it in (docstore.get(h.id) for h in page) if it is not None]
        snippets = highlights(bundle.bm25, req.text, items, fixes)
    elif req.highlight:
        snippets = {h.id: [] for h in page}
    return Arranged(ranked, facets, values, snippets)


def sort_values(bundle: Bundle, field: str, hits: Sequence[Hit]) -> dict[str, float]:
    """Each hit's value of the sorted field (NaN when it has none)."""
    col = bundle.docstore.columns.by_field[field.strip().casefold()]
    by_id = bundle.docstore.docno_by_id
    return {h.id: float(col.numbers[by_id[h.id]]) for h in hits if h.id in by_id}


def browse_docnos(bundle: Bundle, req: SearchRequest, hidden: Collection[str] = (), skip: str | None = None
                  ) -> np.ndarray:
    """Every item passing the request's restrictions (without those on `skip`) and not hidden, in catalog (doc
    number) order."""
    docstore = bundle.docstore
    conditions = docstore.conditions(req.filters, req.price_min, req.price_max, req.where)
    docnos = np.flatnonzero(docstore.columns.mask(conditions, skip=skip))
    drop = [docstore.docno_by_id[i] for i in hidden if i in docstore.docno_by_id]
    return docnos[~np.isin(docnos, drop)] if drop else docnos


def browse(bundle: Bundle, req: SearchRequest, rules: Rules, timings: dict[str, float]
           ) -> tuple[Arranged, int, dict[str, list[str]]]:
    """A filter-only request: the filtered catalog in the requested order (catalog order by default), hidden ids
    left out, pins applied, facets over the whole filtered catalog. No model runs. Returns the arrangement, the
    size of the filtered catalog and the rules that moved hits."""
    t0 = time.perf_counter()
    hidden = set(rules.hide) | set(req.exclude_ids)
    docnos = browse_docnos(bundle, req, hidden)
    if req.sorted_by:
        docnos = docnos[sort_order(bundle.docstore.columns, req.sorted_by, req.descending, docnos, np.zeros(len(docnos)))]
    # Only the ids the page (and the pins) can reach are made into hits: a browse of 40,000 items builds a few dozen.
    reach = req.offset + req.k + len(rules.pin)
    items = bundle.docstore.items
    ranked = [Hit(items[int(d)].id, 0.0, {}) for d in docnos[:reach]]
    moved: dict[str, list[str]] = {}
    arranged = arrange(bundle, replace(req, sort="", facets=()), ranked, rules, moved, lambda field: docnos)
    facets = (count_facets(bundle, req, docnos, lambda field: browse_docnos(bundle, req, hidden, skip=field))
              if req.facets else ())
    values = sort_values(bundle, req.sorted_by, arranged.hits) if req.sorted_by else {}
    timings["browse"] = (time.perf_counter() - t0) * 1e3
    return replace(arranged, facets=facets, sort_values=values), len(docnos), moved


def check_like(bundle: Bundle, req: SearchRequest) -> int:
    """The doc number of a like_id request's item, or InvalidRequest naming the field."""
    if req.image:
        raise InvalidRequest("like_id", "cannot be combined with an image; send one or the other.")
    docno = bundle.docstore.docno_by_id.get(req.like_id)
    if docno is None:
        raise InvalidRequest("like_id", f"no item {req.like_id!r} in this catalog.")
    return docno
