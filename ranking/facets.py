"""Facets and sorting over a set of doc numbers, read from the docstore's columns (indexer/columns.py).

A facet counts the values of one field over a set: the candidates a query's first stage gathered, or the whole
filtered catalog for a browse. A field the request filters on is counted without its own filter ("disjunctive":
choosing "red" still shows how many blue ones there are); the caller passes that set.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from vitrine.indexer.columns import PRICE, Column, Columns, FieldFilter, FilterError, norm

MAX_FACET_SIZE = 100
DERIVED_BUCKETS = 5


@dataclass(frozen=True)
class FacetSpec:
    field: str
    size: int = 10
    ranges: tuple[float, ...] = ()


@dataclass(frozen=True)
class FacetValue:
    value: str
    count: int
    selected: bool = False


@dataclass(frozen=True)
class Bucket:
    min: float | None   # inclusive; None = -inf
    max: float | None   # exclusive; None = +inf
    count: int


@dataclass(frozen=True)
class Facet:
    field: str
    values: tuple[FacetValue, ...]
    buckets: tuple[Bucket, ...]
    missing: int
    other: int
    disjunctive: bool
    counted: int


def check_facets(columns: Columns, specs: Sequence[FacetSpec]) -> None:
    """INVALID_ARGUMENT material before any work: unknown fields, sizes, ranges that do not increase."""
    for n, spec in enumerate(specs):
        name = f"facets[{n}]"
        columns.column(spec.field, f"{name}.field")
        if not 0 <= spec.size <= MAX_FACET_SIZE:
            raise FilterError(f"{name}.size", f"must be between 0 (= 10) and {MAX_FACET_SIZE}, got {spec.size}.")
        if any(not math.isfinite(e) for e in spec.ranges) or any(a >= b for a, b in zip(spec.ranges, spec.ranges[1:])):
            raise FilterError(f"{name}.ranges", f"must be finite and strictly increasing, got {list(spec.ranges)}.")
        if spec.ranges and columns.column(spec.field, name).numeric == 0:
            raise FilterError(f"{name}.ranges", f"field {spec.field!r} has no numbers in this catalog.")


def selected_values(field: str, filters: Sequence[FieldFilter]) -> set[str]:
    return {norm(v) for f in filters if f.field.strip().casefold() == field for v in f.any_of}


def count_facet(column: Column, spec: FacetSpec, docnos: np.ndarray, selected: Collection[str],
                disjunctive: bool) -> Facet:
    """Counts `spec.field`'s values (and numeric buckets) over `docnos`."""
    size = spec.size or 10
    codes = column.codes[docnos]
    present = codes[codes >= 0]
    counts = np.bincount(present, minlength=len(column.values)) if len(present) else np.zeros(0, dtype=np.int64)
    nonzero = np.flatnonzero(counts)
    # Most frequent first, then by value, so equal counts come back in one order every time.
    order = sorted(nonzero, key=lambda c: (-counts[c], column.values[c].casefold()))
    top = order[:size]
    values = tuple(FacetValue(column.values[c], int(counts[c]), norm(column.values[c]) in selected) for c in top)
    numbers = column.numbers[docnos]
    numbers = numbers[~np.isnan(numbers)]
    buckets: tuple[Bucket, ...] = ()
    if column.numeric:
        edges = list(spec.ranges) or derived_edges(numbers)
        buckets = _buckets(numbers, edges)
    has = (codes >= 0) | ~np.isnan(column.numbers[docnos])
    return Facet(spec.field, values, buckets, missing=int(len(docnos) - has.sum()),
                 other=int(sum(counts[c] for c in order[size:])), disjunctive=disjunctive, counted=int(len(docnos)))


def derived_edges(numbers: np.ndarray) -> list[float]:
    """Bucket edges at the quintiles of the counted numbers, rounded to two significant digits, without repeats."""
    if len(numbers) == 0:
        return []
    qs = np.quantile(numbers, np.linspace(0, 1, DERIVED_BUCKETS + 1)[1:-1])
    edges = sorted({_round2(float(q)) for q in qs})
    return [e for e in edges if numbers.min() < e <= numbers.max()]


def _round2(x: float) -> float:
    if x == 0:
        return 0.0
    digits = 1 - int(math.floor(math.log10(abs(x))))
    return round(x, digits)


def _buckets(numbers: np.ndarray, edges: Sequence[float]) -> tuple[Bucket, ...]:
    where = np.searchsorted(np.asarray(edges, dtype=float), numbers, side="right")  # bucket i: [e_{i-1}, e_i)
    counts = np.bincount(where, minlength=len(edges) + 1)
    bounds = [None, *edges, None]
    return tuple(Bucket(bounds[i], bounds[i + 1], int(counts[i])) for i in range(len(edges) + 1))


def sort_column(columns: Columns, field: str) -> Column:
    """The column a sort reads; FilterError naming sort.field when it is unknown or holds no numbers."""
    col = columns.column(field, "sort.field")
    if col.numeric == 0:
        example = next(iter(col.values), "")
        raise FilterError("sort.field", f"{field!r} is not a number in this catalog (a value: {example!r}); sort by "
                                        f"{PRICE!r}, a numeric attribute or relevance.")
    return col


def sort_order(columns: Columns, field: str, descending: bool, docnos: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """Positions of `docnos` ordered by the field's number (items without one last), then by relevance (higher
    first), then by doc number: a stable order a paginating client can rely on."""
    values = sort_column(columns, field).numbers[docnos]
    missing = np.isnan(values)
    key = np.where(missing, 0.0, -values if descending else values)
    return np.lexsort((docnos, -relevance, key, missing))
