"""Highlights: title and description snippets with the query's words marked, by Tantivy's snippet generator.

The generator reads the query as BM25 searched it (the index's tokenizer, so "dresses" marks "dress" after stemming,
and a misspelt word's catalog spelling) and the item's stored text from the docstore (the index keeps no stored text).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import tantivy

from vitrine.indexer.bm25 import Bm25Index
from vitrine.indexer.catalog import Item

FIELDS = ("title", "description")
MAX_CHARS = 200


@dataclass(frozen=True)
class Snippet:
    field: str
    fragment: str                     # plain text
    html: str                         # HTML-escaped, matched words in <b>…</b>
    spans: tuple[tuple[int, int], ...]  # (start, end) character offsets into fragment


def highlights(bm25: Bm25Index, text: str, items: Sequence[Item], fixes: Mapping[str, tuple[str, int]] | None = None,
               ) -> dict[str, list[Snippet]]:
    """Item id -> the snippets of its fields where a query word matched (empty: no lexical match)."""
    query = bm25.highlight_query(text, fixes)
    out: dict[str, list[Snippet]] = {it.id: [] for it in items}
    if query is None or not items:
        return out
    searcher = bm25.index.searcher()
    for name in FIELDS:
        gen = tantivy.SnippetGenerator.create(searcher, query, bm25.schema, name)
        gen.set_max_num_chars(MAX_CHARS)
        for item in items:
            value = getattr(item, name)
            if not value:
                continue
            doc = tantivy.Document()
            doc.add_text(name, value)
            snippet = gen.snippet_from_doc(doc)
            ranges = snippet.highlighted()
            if ranges:
                out[item.id].append(_snippet(name, snippet.fragment(), snippet.to_html(), ranges))
    return out


def _snippet(field: str, fragment: str, html: str, ranges: list) -> Snippet:
    # Tantivy's offsets are UTF-8 bytes of the fragment; clients index strings by character.
    raw = fragment.encode()
    spans = tuple((len(raw[:r.start].decode(errors="ignore")), len(raw[:r.end].decode(errors="ignore"))) for r in ranges)
    return Snippet(field, fragment, html, spans)
