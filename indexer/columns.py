"""Per-field columns over doc numbers: what filters, facets and sorting read without touching an item.

Each attribute, the category and the price get a column: an int32 value code per doc number (-1: the item has no
value) and, where the value is a number, a float64 (NaN: none). A filter is a boolean mask over doc numbers, a facet a
`np.bincount` of the codes of the counted set, a sort an argsort of the numbers: vectorised, so a browse of tens of
thousands of items costs a few milliseconds. Values compare as the exact-match filters always have: case-folded, runs
of white space as one space (docstore.filter_term).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CATEGORY = "category"
PRICE = "price"


def norm(value: str) -> str:
    return " ".join(str(value).split()).casefold()


def as_number(value: str) -> float | None:
    """The value as a finite number ("42", "3.5", " 1e3 "), or None."""
    try:
        x = float(str(value).strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def known_fields(names: Iterable[str]) -> str:
    """Field names for an error message, sorted; bounded: live writes can add many attribute names, and a status
    message must stay small."""
    fields = sorted(names)
    return ", ".join(fields[:30]) + (f", … ({len(fields) - 30} more)" if len(fields) > 30 else "")


@dataclass(frozen=True)
class FieldFilter:
    """One field's condition (proto FieldFilter): any of / none of several values, a numeric range, presence."""

    field: str
    any_of: tuple[str, ...] = ()
    none_of: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    exists: bool | None = None

    @property
    def ranged(self) -> bool:
        return self.min is not None or self.max is not None


class FilterError(ValueError):
    """A filter, facet or sort names a field wrongly; `field` is the request field to name (e.g. "where.color")."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(message)


class Column:
    """One field: value codes and numbers by doc number, the values' display spelling (the first one stored)."""

    def __init__(self, capacity: int) -> None:
        self.codes = np.full(capacity, -1, dtype=np.int32)
        self.numbers = np.full(capacity, np.nan)
        self.values: list[str] = []       # display spelling by code
        self.code_of: dict[str, int] = {}  # norm(value) -> code
        self.numeric = 0                  # items whose value is a number

    def grow(self, capacity: int) -> None:
        extra = capacity - len(self.codes)
        self.codes = np.concatenate([self.codes, np.full(extra, -1, dtype=np.int32)])
        self.numbers = np.concatenate([self.numbers, np.full(extra, np.nan)])

    def set(self, docno: int, value: str | None, number: float | None) -> None:
        if value is not None:
            key = norm(value)
            code = self.code_of.get(key)
            if code is None:
                code = self.code_of[key] = len(self.values)
                self.values.append(" ".join(str(value).split()))
            self.codes[docno] = code
        if number is not None:
            self.numeric += int(np.isnan(self.numbers[docno]))
            self.numbers[docno] = number

    def clear(self, docno: int) -> None:
        self.numeric -= int(not np.isnan(self.numbers[docno]))
        self.codes[docno] = -1
        self.numbers[docno] = np.nan

    def has(self) -> np.ndarray:
        return (self.codes >= 0) | ~np.isnan(self.numbers)

    def matching(self, values: Iterable[str], prefix: bool = False) -> np.ndarray:
        """Mask of items whose value is one of `values` (with `prefix`, a category path: also every path below it)."""
        wanted = {norm(v) for v in values}
        codes = [c for key, c in self.code_of.items()
                 if key in wanted or (prefix and any(key.startswith(w + " > ") for w in wanted))]
        if not codes:
            return np.zeros(len(self.codes), dtype=bool)
        return np.isin(self.codes, np.asarray(codes, dtype=np.int32))


class Columns:
    """Every field's column, kept by DocStore as items are stored and removed."""

    def __init__(self) -> None:
        self.capacity = 1024
        self.live = np.zeros(self.capacity, dtype=bool)
        self.by_field: dict[str, Column] = {PRICE: Column(self.capacity), CATEGORY: Column(self.capacity)}

    def add(self, docno: int, category: str, attributes: Mapping[str, str], price: float | None) -> None:
        if docno >= self.capacity:
            self._grow(docno + 1)
        self.live[docno] = True
        if category:
            self.by_field[CATEGORY].set(docno, " > ".join(p.strip() for p in category.split(">")), None)
        if price is not None:
            self.by_field[PRICE].set(docno, None, price)
        for key, value in attributes.items():
            field = key.strip().casefold()
            if field in (PRICE, CATEGORY):
                continue  # the item's own price and category are those fields
            col = self.by_field.get(field)
            if col is None:
                col = self.by_field[field] = Column(self.capacity)
            col.set(docno, value, as_number(value))

    def remove(self, docno: int) -> None:
        if docno < self.capacity and self.live[docno]:
            self.live[docno] = False
            for col in self.by_field.values():
                col.clear(docno)

    def _grow(self, need: int) -> None:
        capacity = max(need, 2 * self.capacity)
        self.live = np.concatenate([self.live, np.zeros(capacity - self.capacity, dtype=bool)])
        for col in self.by_field.values():
            col.grow(capacity)
        self.capacity = capacity

    def column(self, field: str, request_field: str) -> Column:
        col = self.by_field.get(field.strip().casefold())
        if col is None:
            raise FilterError(request_field, f"unknown field {field!r}; this catalog has: {self.known()}.")
        return col

    def known(self) -> str:
        return known_fields(self.by_field)

    def mask(self, filters: Sequence[FieldFilter], skip: str | None = None) -> np.ndarray:
        """Live items passing every filter (a field named `skip` is left out: a disjunctive facet's own filter)."""
        out = self.live.copy()
        for f in filters:
            if skip is None or f.field.strip().casefold() != skip:
                out &= self._one(f)
        return out

    def _one(self, f: FieldFilter) -> np.ndarray:
        name = f"where.{f.field}"
        if not f.field.strip():
            raise FilterError("where.field", "is empty; name a field (category, price or an attribute).")
        col = self.column(f.field, name)
        field = f.field.strip().casefold()
        out = np.ones(self.capacity, dtype=bool)
        if (f.any_of or f.none_of) and field == PRICE:
            raise FilterError(name, "price is a number: filter it with min/max, not any_of/none_of.")
        if f.any_of:
            out &= col.matching(f.any_of, prefix=field == CATEGORY)
        if f.none_of:
            out &= ~col.matching(f.none_of, prefix=field == CATEGORY)
        if f.ranged:
            if col.numeric == 0:
                example = next(iter(col.values), "")
                raise FilterError(name, f"is not a number in this catalog (a value: {example!r}); filter it with "
                                        "any_of/none_of, or give min/max only on price or a numeric attribute.")
            if any(b is not None and not math.isfinite(b) for b in (f.min, f.max)):
                raise FilterError(name, f"min and max must be finite numbers, got {f.min} and {f.max}.")
            if f.min is not None and f.max is not None and f.min > f.max:
                raise FilterError(name, f"min {f.min:g} is greater than max {f.max:g}.")
            lo = -np.inf if f.min is None else f.min
            hi = np.inf if f.max is None else f.max
            with np.errstate(invalid="ignore"):
                out &= (col.numbers >= lo) & (col.numbers <= hi)
        if f.exists is not None:
            out &= col.has() if f.exists else ~col.has()
        return out
