"""Stored fields, the id <-> doc-number map, and exact-match filters, kept in SQLite and mirrored in memory.

Doc numbers (int64) are what BM25 and FAISS store; they are assigned once and never reused, so an
upsert can delete an item's old number from every index and add a new one without a rebuild.
"""
from __future__ import annotations

import json
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from vitrine.indexer.catalog import Item, item_from_dict
from vitrine.indexer.columns import CATEGORY, PRICE, Columns, FieldFilter, FilterError, known_fields, norm


def filter_terms(item: Item) -> list[str]:
    """The exact-match terms an item can be filtered on: `category=<each path prefix>` and `attr=value`.

    Values are case-folded. A category "A > B > C" matches filters "A", "A > B" and "A > B > C".
    The BM25 index stores the same terms, so both sides filter identically.
    """
    terms = []
    if item.category:
        parts = [p.strip() for p in item.category.split(">")]
        for i in range(1, len(parts) + 1):
            terms.append(filter_term(CATEGORY, " > ".join(parts[:i])))
    for key, value in item.attributes.items():
        terms.append(filter_term(key, value))
    return terms


def filter_term(field: str, value: str) -> str:
    return f"{field.strip().casefold()}={norm(value)}"


class DocStore:
    """Items by doc number, with the id map and per-term posting sets for filters."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS items (docno INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, doc TEXT NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.items: dict[int, Item] = {}
        self.docno_by_id: dict[str, int] = {}
        self._postings: dict[str, set[int]] = defaultdict(set)
        self.filter_fields: set[str] = {CATEGORY}
        self.columns = Columns()  # per-field value codes and numbers: filters beyond one value, facets, sorting
        for docno, doc in self._db.execute("SELECT docno, doc FROM items"):
            self._index(docno, item_from_dict(json.loads(doc)))
        row = self._db.execute("SELECT value FROM meta WHERE key='next_docno'").fetchone()
        self.next_docno = int(row[0]) if row else (max(self.items, default=-1) + 1)

    def __len__(self) -> int:
        return len(self.items)

    def close(self) -> None:
        self._db.close()

    def assign(self, items: Iterable[Item]) -> list[tuple[int, Item]]:
        """Gives each item a fresh doc number (without storing it yet)."""
        out = []
        for item in items:
            out.append((self.next_docno, item))
            self.next_docno += 1
        return out

    def put_many(self, rows: Iterable[tuple[int, Item]]) -> None:
        """Stores items under their doc numbers in one transaction; an id already present is replaced."""
        rows = list(rows)
        self._db.execute("BEGIN")
        try:
            for docno, item in rows:
                old = self.docno_by_id.get(item.id)
                if old is not None and old != docno:
                    self._db.execute("DELETE FROM items WHERE docno=?", (old,))
                self._db.execute(
                    "INSERT OR REPLACE INTO items (docno, id, doc) VALUES (?, ?, ?)",
                    (docno, item.id, json.dumps(item.to_dict(), ensure_ascii=False)),
                )
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('next_docno', ?)", (str(self.next_docno),))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        for docno, item in rows:
            old = self.docno_by_id.get(item.id)
            if old is not None and old != docno:
                self._unindex(old)
            self._index(docno, item)

    def delete_ids(self, ids: Iterable[str]) -> list[int]:
        """Deletes items by id; returns the doc numbers removed (unknown ids are ignored)."""
        docnos = [self.docno_by_id[i] for i in ids if i in self.docno_by_id]
        if docnos:
            self._db.executemany("DELETE FROM items WHERE docno=?", [(d,) for d in docnos])
        for d in docnos:
            self._unindex(d)
        return docnos

    def get(self, item_id: str) -> Item | None:
        docno = self.docno_by_id.get(item_id)
        return None if docno is None else self.items[docno]

    def allowed(
        self, filters: Mapping[str, str], price_min: float | None = None, price_max: float | None = None,
        where: Sequence[FieldFilter] = (),
    ) -> np.ndarray | None:
        """Doc numbers matching every filter, the price range and every `where` condition, or None when nothing
        restricts.

        Raises ValueError naming an unknown filter field (FilterError, naming the request field, for `where`).
        """
        if where:
            return np.flatnonzero(self.columns.mask(self.conditions(filters, price_min, price_max, where)))
        if not filters and price_min is None and price_max is None:
            return None
        sets: list[set[int]] = []
        for field, value in filters.items():
            if field.casefold() not in self.filter_fields:
                raise ValueError(f"filters: unknown filter field {field!r}; this catalog has: "
                                 f"{known_fields(self.filter_fields)}.")
            sets.append(self._postings.get(filter_term(field, value), set()))
        if price_min is not None or price_max is not None:
            lo = -np.inf if price_min is None else price_min
            hi = np.inf if price_max is None else price_max
            prices = self.columns.by_field[PRICE].numbers
            with np.errstate(invalid="ignore"):   # NaN: no price (or no item)
                sets.append(set(np.flatnonzero((prices >= lo) & (prices <= hi)).tolist()))
        sets.sort(key=len)
        result = set(sets[0]).intersection(*sets[1:]) if sets else set()
        return np.fromiter(result, dtype=np.int64, count=len(result))

    def conditions(self, filters: Mapping[str, str], price_min: float | None = None, price_max: float | None = None,
                   where: Sequence[FieldFilter] = ()) -> list[FieldFilter]:
        """Every restriction of a request as FieldFilters: the exact `filters`, the price range, then `where`."""
        out = []
        for field, value in filters.items():
            if field.casefold() not in self.filter_fields:
                raise FilterError("filters", f"unknown filter field {field!r}; this catalog has: {self.columns.known()}.")
            out.append(FieldFilter(field, any_of=(value,)))
        if price_min is not None or price_max is not None:
            out.append(FieldFilter("price", min=price_min, max=price_max))
        return out + list(where)

    def mentioned_values(self, text: str, fields: Sequence[str] = ()) -> dict[str, str]:
        """Attribute values of this catalog that the text names as whole words, longest per field.

        "the same but in navy blue" -> {"color": "navy blue"}. Used as constraints for composed queries.
        """
        words = " " + " ".join(re.findall(r"\w+", text.casefold())) + " "
        found: dict[str, str] = {}
        for term, docs in self._postings.items():
            field, _, value = term.partition("=")
            if not docs or field == CATEGORY or (fields and field not in fields):
                continue
            norm = " ".join(re.findall(r"\w+", value))
            if len(norm) >= 3 and f" {norm} " in words and len(norm) > len(found.get(field, "")):
                found[field] = norm
        return found

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _index(self, docno: int, item: Item) -> None:
        self.items[docno] = item
        self.docno_by_id[item.id] = docno
        for term in filter_terms(item):
            self._postings[term].add(docno)
        for key in item.attributes:
            self.filter_fields.add(key.casefold())
        self.columns.add(docno, item.category, item.attributes, item.price)

    def _unindex(self, docno: int) -> None:
        item = self.items.pop(docno, None)
        if item is None:
            return
        if self.docno_by_id.get(item.id) == docno:
            del self.docno_by_id[item.id]
        for term in filter_terms(item):
            self._postings[term].discard(docno)
        self.columns.remove(docno)
